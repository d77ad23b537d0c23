"""Missing values for the models: indicator + training-median imputation, the policy in
`analytics.risk.core.features`'s docstring ("Missing values")."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class MissingValueImputer:
    """Indicator + training-median imputation (the policy of `analytics.risk.core.features`).

    Fit it on training rows only; `transform` then applies the training medians and
    indicators to any rows. ``dropped`` records each dropped column and why. A column
    that is constant where present but sometimes missing keeps only its indicator.
    """

    columns: list[str] = field(default_factory=list)
    medians: dict[str, float] = field(default_factory=dict)
    indicators: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    def fit(self, frame: pd.DataFrame) -> MissingValueImputer:
        self.columns, self.medians, self.indicators, self.dropped = [], {}, [], {}
        for column in frame.columns:
            values = frame[column].astype(float)
            has_missing = bool(values.isna().any())
            if values.isna().all():
                self.dropped[column] = "missing in every training row"
                continue
            if values.nunique(dropna=True) < 2:
                if not has_missing:
                    self.dropped[column] = "constant in the training rows"
                    continue
                self.dropped[column] = "constant where present: only its missing indicator is kept"
            else:
                self.columns.append(column)
                self.medians[column] = float(values.median())
            if has_missing:
                self.indicators.append(column)
        return self

    @property
    def inputs(self) -> list[str]:
        """The raw columns `transform` reads."""
        return list(dict.fromkeys([*self.columns, *self.indicators]))

    @property
    def feature_names_out(self) -> list[str]:
        return [*self.columns, *(f"{c}_missing" for c in self.indicators)]

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        absent = [c for c in self.inputs if c not in frame.columns]
        if absent:
            raise KeyError(f"columns the imputer was fitted with are absent: {absent}")
        values = frame.loc[:, self.inputs].astype(float)
        out = values.loc[:, self.columns].fillna(self.medians)
        for column in self.indicators:
            out[f"{column}_missing"] = values[column].isna().astype(float)
        return out

    def fit_transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.fit(frame).transform(frame)

    def source_of(self, design_column: str) -> str:
        """The raw feature a design column comes from (``x_missing`` -> ``x``)."""
        stem = design_column.removesuffix("_missing")
        return stem if design_column != stem and stem in self.indicators else design_column
