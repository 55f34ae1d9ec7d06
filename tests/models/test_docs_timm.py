"""The docs' transcripts that name timm models, run where timm is installed (CI's timm venv runs
tests/models only; the main suite skips these commands). The convention is in tests/test_docs.py."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("timm", reason="timm is not installed (pip install 'flopkit[timm]')")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import test_docs  # noqa: E402

TIMM = [t for t in test_docs.ALL if any("timm:" in c.text for c in t.commands) and not t.skip]


@pytest.mark.parametrize("transcript", TIMM, ids=[t.id for t in TIMM])
def test_timm_transcript_output_matches_the_docs(transcript, tmp_path):
    """Each block in this process (the main suite runs its transcripts in a process of their own)."""
    outs = test_docs.run_transcripts([transcript.id], tmp_path)[transcript.id]
    test_docs.check_outputs(transcript, outs)
