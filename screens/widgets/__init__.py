"""Reusable widgets: MetricChart (line chart with a SIGMA line, ≤ 10 Hz redraws), FrameTable, HealthAlerts."""
