"""One target's verdict, as every benchmark that judges targets prints it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    name: str
    measured: str
    bound: str
    met: bool

    def row(self) -> str:
        verdict = "met" if self.met else "NOT met"
        return f"| {self.name} | {self.measured} | {self.bound} | {verdict} |"
