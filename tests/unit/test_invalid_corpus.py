"""The invalid-input corpus (tests/e2e/data/invalid-corpus.yaml) is the generator's output, large enough, and
each case says one outcome; the e2e suite runs it against the real API server (tests/e2e/test_invalid_corpus.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support import invalid_corpus

COMMITTED = Path(__file__).resolve().parents[1] / "e2e" / "data" / "invalid-corpus.yaml"


def test_committed_corpus_is_the_generators_output() -> None:
    assert COMMITTED.read_text() == invalid_corpus.render(), (
        "regenerate: python -m tests.support.invalid_corpus > tests/e2e/data/invalid-corpus.yaml"
    )


def test_at_least_forty_cases_each_with_one_outcome() -> None:
    cases = yaml.safe_load(COMMITTED.read_text())["cases"]
    assert len(cases) >= 40
    admission = [c for c in cases if "admission" in c["expect"]]
    preflight = [c for c in cases if "preflight" in c["expect"]]
    assert len(admission) + len(preflight) == len(cases) and admission and preflight
    assert len({c["name"] for c in cases}) == len(cases)


def test_cases_run_apart_unless_they_need_the_real_database() -> None:
    """Each case names a database of its own (its own Lease), so the preflight cases run at once."""
    cases = yaml.safe_load(COMMITTED.read_text())["cases"]
    names = [c["spec"].get("database", {}).get("name") for c in cases if isinstance(c["spec"].get("database"), dict)]
    named = [n for n in names if isinstance(n, str) and n.startswith("corpus_")]
    assert len(set(named)) == len(named)
