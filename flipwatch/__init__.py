"""flipwatch: label-free accuracy monitoring for deployed image classifiers (Weighted Flips).

Import names, one direction each (checked by import-linter, see pyproject.toml):

- `flipwatch.client`: the HTTP client a pipeline uses (httpx only; no torch).
- `flipwatch.cli`: the one `flipwatch` command and the start-up code of every process.
- `flipwatch.demos`: demo data, the demo model and the two demos.
- `flipwatch.workers`: queue consumers, job lifecycle and `flipwatch.workers.estimation`, the pure
  torch estimator (folder `workers/`).
- `flipwatch.service`: the API, the database and the metrics (folder `service/`).
"""

__version__ = "0.1.0"
