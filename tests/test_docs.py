"""The docs say of each training campaign what its own README says: a finished campaign is never
called "under way" elsewhere."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_doc_calls_a_finished_campaign_under_way():
    finished = [p.parent.name for p in (ROOT / "campaign").glob("*/README.md")
                if re.search(r"\*\*Finished\*\*|\bfinished\b", p.read_text(), re.IGNORECASE)]
    assert finished
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        text = doc.read_text()
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if re.search(r"under way|underway|in progress|still running", sentence, re.IGNORECASE):
                named = [c for c in finished if c in sentence] or (["a campaign"] if "campaign" in sentence else [])
                assert not named, f"{doc.name} calls {named[0]} under way: {sentence.strip()[:160]}"
