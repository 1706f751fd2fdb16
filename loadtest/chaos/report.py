"""The chaos run's report: one JSON file for machines, one Markdown file for people."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

from .checker import Ack, ChannelLog, Counts, Verdict

MAX_FINDINGS = 50  # per kind, in the report; the counts are always complete


def to_json(verdict: Verdict, run: dict[str, Any]) -> dict[str, Any]:
    by_kind: dict[str, list[dict[str, str]]] = {}
    for finding in verdict.findings:
        bucket = by_kind.setdefault(finding.kind, [])
        if len(bucket) < MAX_FINDINGS:
            bucket.append(dataclasses.asdict(finding))
    return {
        "run": run,
        "failed": verdict.failed(),
        "acknowledged_publications": verdict.acknowledged,
        "totals": verdict.total.to_json(),
        "by_transport": {name: counts.to_json() for name, counts in sorted(verdict.by_transport.items())},
        "subscribes_refused": {"total": verdict.refused_total, "while_broker_healthy": verdict.refused_while_healthy},
        "reused_ids": [{"channel": c, "id": i, "sequences": s} for c, i, s in verdict.reused_ids[:MAX_FINDINGS]],
        "findings": by_kind,
    }


def _row(name: str, counts: Counts) -> str:
    resets = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.resets.items())) or "0"
    return (
        f"| {name} | {counts.delivered:,} | {counts.silent_losses} ({counts.silent_gaps} gaps, "
        f"{counts.reset_window_cuts} cuts) | {counts.duplicates} | {counts.reorders} | "
        f"{counts.undelivered_at_end} | {counts.reset_window_cuts} | {counts.events_before_reset} | "
        f"{counts.resumes:,} ({counts.recovered:,} recovered, {counts.replayed:,} replayed) | "
        f"{counts.gaps_covered_by_reset} ({counts.publications_covered_by_reset:,} publications) | {resets} |"
    )


def to_markdown(verdict: Verdict, run: dict[str, Any]) -> str:
    status = "FAILED" if verdict.failed() else "passed"
    lines = [
        f"# Chaos run: {run.get('broker')}, seed {run.get('seed')}: {status}",
        "",
        f"- Duration: {run.get('seconds')} s of faults and publishing, then {run.get('settle_seconds', 0):.0f} s to settle",
        f"- Acknowledged publications: {verdict.acknowledged:,} ({run.get('publish_rate', 0):.0f}/s) over "
        f"{run.get('channels')} channels",
        f"- Checked deliveries: {verdict.total.delivered:,}",
        f"- Clients: {run.get('clients')}; connections: {verdict.total.connections:,}",
        f"- Faults: {run.get('fault_counts')}",
        f"- Id reuse: {verdict.total.id_reuse}",
        f"- Client errors (unexpected exceptions; the client reconnected): {run.get('client_stats', {}).get('errors') or 0}",
        f"- Refused with broker_unavailable: {run.get('refusals') or 0}; subscribes refused on accepted connections "
        f"while the broker was healthy: {verdict.refused_while_healthy}",
        f"- Reproduce: `{run.get('command')}`",
        "",
        "| Transport | Delivered | Silent losses (gaps after an event, reset-window cuts) | Duplicates | Reorders | "
        "Undelivered at end | Reset-window cuts | "
        "Events before reset | Resumes | Gaps covered by a reset | Resets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, counts in sorted(verdict.by_transport.items()):
        lines.append(_row(name, counts))
    lines.append(_row("**all**", verdict.total))
    lines += [
        "",
        "Silent losses, duplicates, reorders, id reuse and publications undelivered at the end fail the run.",
        "A reset-window cut is a connection that ended between a `subscribed` that moved the stored position",
        "and the `reset` explaining it; what it skipped is counted as silent loss.",
    ]
    shown: dict[str, int] = {}
    examples = []
    for finding in verdict.findings:
        if shown.get(finding.kind, 0) >= 10:
            continue
        shown[finding.kind] = shown.get(finding.kind, 0) + 1
        examples.append(f"- `{finding.kind}` {finding.transport} {finding.client} `{finding.channel}`: {finding.detail}")
    if examples:
        lines += ["", "## Findings (first 10 of each kind)", "", *examples]
    return "\n".join(lines) + "\n"


def write(directory: Path, verdict: Verdict, run: dict[str, Any]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"chaos-{run.get('broker')}-{run.get('seed')}"
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_text(json.dumps(to_json(verdict, run), indent=2, default=str) + "\n")
    md_path.write_text(to_markdown(verdict, run))
    return json_path, md_path


def write_evidence(
    directory: Path, run: dict[str, Any], verdict: Verdict, logs: list[ChannelLog], acks: list[Ack]
) -> Path:
    """The full logs of every (client, channel) with a finding, and the acknowledgements of those channels.

    One JSON object per line, gzipped: enough to replay the checker on the
    evidence (``loadtest.chaos.checker.check_log``) or to read it by hand.
    """
    flagged = {(f.client, f.channel) for f in verdict.findings}
    channels = {channel for _, channel in flagged} | {f.channel for f in verdict.findings if f.client == "-"}
    path = directory / f"chaos-{run.get('broker')}-{run.get('seed')}-evidence.jsonl.gz"
    with gzip.open(path, "wt") as out:
        for ack in acks:
            if ack.channel in channels:
                out.write(json.dumps({"ack": [ack.channel, ack.id, ack.seq]}) + "\n")
        for log in logs:
            if (log.client, log.channel) in flagged:
                entries = [
                    {k: v for k, v in (("kind", e.kind.value), ("id", e.id), ("seq", e.seq), ("recovered", e.recovered),
                                       ("since", e.since), ("replayed", e.replayed), ("reason", e.reason), ("node", e.node))
                                      if v is not None}
                    for e in log.entries
                ]
                out.write(json.dumps({"client": log.client, "transport": log.transport, "channel": log.channel,
                                      "persistent": log.persistent, "entries": entries}) + "\n")
    return path
