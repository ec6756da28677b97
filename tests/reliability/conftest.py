"""The fault-injection tests report what they tried and what it cost; the table is printed after the test session
(the README's reliability table is copied from it)."""

from __future__ import annotations

from collections import defaultdict

import pytest

_TRIED: dict[str, list[str]] = defaultdict(list)


@pytest.fixture
def faults():
    """``faults(fault, lost)``: one injection of ``fault`` and what it lost (e.g. "2 steps recomputed")."""

    def record(fault: str, lost: str) -> None:
        _TRIED[fault].append(lost)

    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if not _TRIED:
        return
    terminalreporter.section("faults injected")
    terminalreporter.write_line("| fault | times | lost |")
    terminalreporter.write_line("|---|---|---|")
    for fault, losses in _TRIED.items():
        counts: dict[str, int] = defaultdict(int)
        for lost in losses:
            counts[lost] += 1
        lost = "; ".join(f"{what} (x{n})" if n > 1 else what for what, n in counts.items())
        terminalreporter.write_line(f"| {fault} | {len(losses)} | {lost} |")
