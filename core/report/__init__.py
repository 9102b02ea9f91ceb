"""report.html: a run's curves, data accounting, scores and sample replies on one page."""
