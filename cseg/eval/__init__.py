"""cseg.eval: `cseg eval`. evaluate.py runs a backend over a dataset (resumable work folder, per-sample records,
summaries), metrics.py holds the paper's metrics, datasets/ one reader per dataset format."""
