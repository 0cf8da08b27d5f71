"""Settings sections of the dashboard, trends and alerts (issue 17), part of
:class:`emomon.services.settings.Settings` (kept here so that module stays small)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emomon.services.alerts import AlertRule, AlertRuleError, parse_rule


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DashboardSettings(_Section):
    enabled: bool = Field(False, description="serve the live dashboard (--dashboard)")
    host: str = Field(
        "127.0.0.1", min_length=1, description="address the dashboard listens on (loopback)"
    )
    port: int = Field(8765, ge=0, le=65535, description="dashboard port (0: a free one, printed)")
    history: int = Field(
        500, ge=10, le=100_000, description="events per session a newly opened page receives"
    )
    keep_open: bool = Field(
        True, description="after the sources end, keep serving the page until Ctrl-C"
    )


class TrendSettings(_Section):
    enabled: bool = Field(True, description="publish per-speaker trends (MQTT and dashboard)")
    window_s: float = Field(
        60.0, gt=0, le=24 * 3600, description="stream time a trend covers, seconds"
    )


class AlertRuleSettings(_Section):
    when: str = Field(description="e.g. 'anger >= 0.7 in 3 of last 5', 'valence < -0.5 for 60 s'")
    name: str | None = Field(None, description="topic/entity-safe name; default from 'when'")

    @model_validator(mode="after")
    def _parses(self) -> AlertRuleSettings:
        try:
            parse_rule(self.when, self.name)
        except AlertRuleError as e:
            raise ValueError(str(e)) from None
        return self

    def rule(self) -> AlertRule:
        return parse_rule(self.when, self.name)


class AlertSettings(_Section):
    rules: tuple[AlertRuleSettings, ...] = Field(
        (), description="[[alerts.rules]] tables with 'when' (and optional 'name')"
    )
    hysteresis: float = Field(
        0.1, ge=0.0, le=1.0, description="threshold relaxed by this before an alert clears"
    )

    @field_validator("rules", mode="before")
    @classmethod
    def _plain_strings(cls, v: object) -> object:
        """A rule may also be given as its bare text (``rules = ["fear > 0.8"]``)."""
        if isinstance(v, list | tuple):
            return tuple({"when": r} if isinstance(r, str) else r for r in v)
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> AlertSettings:
        seen: set[str] = set()
        for r in self.parsed():
            if r.name in seen:
                raise ValueError(f"two alert rules are named {r.name!r}; give one a 'name'")
            seen.add(r.name)
        return self

    def parsed(self) -> tuple[AlertRule, ...]:
        return tuple(r.rule() for r in self.rules)
