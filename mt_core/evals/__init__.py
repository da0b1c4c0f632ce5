"""Evaluations of one model: marker scorers (``markers``), ARC-Challenge (``arc``), the alignment judge (``judge``) and
the degeneracy audit (``audit``)."""
