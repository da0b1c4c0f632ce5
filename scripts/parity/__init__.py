"""Protocol parity: every reference parameter (PROTOCOL.md), our value read from the loaded study or from the code that
uses it, and why they differ; ``scripts/gen_parity.py`` writes it to ``docs/PROTOCOL_PARITY.md``.

``reference.REFERENCE`` is the table. A row whose values agree is "same"; a deliberate difference carries a note saying
why; a difference without a note is reported as ``DIFFERS (undocumented)``, so a config or code change that drifts from
the reference shows up in ``docs/PROTOCOL_PARITY.md`` (``scripts/gen_parity.py --check`` fails until the document is
regenerated). No row's ``ours`` is a constant (tests/test_parity.py checks): a value the code holds is imported from it
(``values``), and a behaviour (loss normalisation, truncation, seeding, engine settings, caching) is read by running the
code that has it on a small probe (``probes``), so the document cannot say more than the code does. ``render``
compares and writes the table.

This is a script's package, not the pipeline's: it may import any layer (the probe of artefact caching runs
``mt_resources.store``); ``mt_core`` never imports it.
"""
from . import probes, reference, render as rendering, values
from .reference import DEFECTS, REFERENCE, Param
from .render import PARITY_PROFILE, UNDOCUMENTED, fmt, render, rows, status

__all__ = ["DEFECTS", "PARITY_PROFILE", "REFERENCE", "UNDOCUMENTED", "Param", "fmt", "probes", "reference", "render",
           "rendering", "rows", "status", "values"]
