"""The comparison app behind `keras-prune compare`: the seed article's experiment.

It trains the seed ConvNet dense and pruned with each schedule, over seeds,
and reports accuracy, sparsity, file sizes and Welch's t-tests
(`experiment.py`), as a table, `results.json`/`results.csv` and PNG plots
(`cli.py`, `results.py`, `plots.py`), on the embedded digits or
Fashion-MNIST (`datasets.py`), or your own `.keras` model and `.npz` data
(`task.py`). It uses only keras_prune's public API; the library never
imports it. Install its extra: `pip install "keras-prune[compare]"`.

Example:

```sh
keras-prune compare --epochs 2 --limit 2000 --out out/
```
"""
