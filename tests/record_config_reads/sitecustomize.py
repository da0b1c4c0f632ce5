"""Run by Python at the start of every process whose PYTHONPATH holds this folder (``tests/config_reads.py``'s
``subprocess_env``): with $MT_RECORD_CONFIG_READS set, the process records the study fields it reads and writes them
to that file as it exits. Test support only; nothing here is imported by the platform."""
import os

if os.environ.get("MT_RECORD_CONFIG_READS"):
    import importlib.util
    import sys
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location("mt_tests_config_reads", Path(__file__).resolve().parents[1]
                                                   / "config_reads.py")
    _reads = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _reads
    _spec.loader.exec_module(_reads)
    _reads.record_on_import(Path(os.environ["MT_RECORD_CONFIG_READS"]))
