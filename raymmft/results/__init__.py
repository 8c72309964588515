"""The results layer: what a search wrote, read back, turned into rows and written as a report.

``experiment`` is the one parser of Tune's files (the report, the search's summary and ``--resume``
read it); ``rows`` builds one row per trial, the Pareto front and the best trial; ``plots`` and
``report`` write ``trials.parquet``, the PNGs and the page. Imports neither torch nor Ray, so
``raymmft report`` runs anywhere the experiment's storage can be read.
"""
