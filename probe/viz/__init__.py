"""Floor 6, viz: plotly figures (functions that return go.Figure, named <what>_figure, never shown here).
Imports analyses and every floor below."""
