"""A short chaos run on every broker (issue 10): the resume guarantee under a seeded fault schedule.

`make chaos` runs the same tool for minutes per broker; this is its smoke in
`make test`: about 22 s per broker (10 s of faults) with a fixed seed, faults every few
seconds (node SIGKILL and drain, broker restart, paused clients, reconnect
storms), checked by loadtest/chaos/checker.py. Zero silent losses,
duplicates, reorders, id reuse and undelivered publications, or the report
says where.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chaos.runner import Options, run

from .servers import CLUSTERS, available_kinds

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SEED = 1130
SECONDS = 10.0


# Kafka on Tansu 0.6 (memory engine) can lose records in the first second after a broker restart and reuse
# their offsets under the same topic id (loadtest/results/chaos/chaos-kafka-6060-6ab862c.md,
# chaos-kafka-3101-60s-restart-window.md; docs/brokers/kafka.md, Known limits): a broker defect no Kafka client can
# detect. Whether this 10 s run meets one depends on timing, so the mark is non-strict: an XPASS is not a proof.
KAFKA_OPEN = pytest.mark.xfail(
    reason="issue 10: Tansu's memory engine reuses offsets after some restarts (docs/brokers/kafka.md)", strict=False
)


def brokers() -> list[object]:
    return [pytest.param(kind, marks=KAFKA_OPEN) if kind == "kafka" else kind for kind in available_kinds() if kind not in CLUSTERS]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("broker", brokers())
def test_a_short_chaos_run_breaks_no_guarantee(broker: str, tmp_path: Path) -> None:
    options = Options(
        broker=broker, seconds=SECONDS, seed=SEED, report_dir=tmp_path, settle=15.0, fault_gap=(2.0, 3.5), first_fault=2.0,
        ws_clients=16, sse_clients=8, quiet=True,
    )
    result = run(options)
    totals = result.verdict.total
    assert result.run["fault_counts"], "no fault was injected"
    assert totals.delivered > 0 and result.verdict.acknowledged > 0
    assert not result.verdict.failed(), result.paths[1].read_text()
