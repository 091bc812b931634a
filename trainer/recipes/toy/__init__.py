"""The engine's smoke-test recipe: an MLP regressor on a seeded problem (no data, no config section)."""

from fusionrec.trainer.recipes import Recipe

RECIPE = Recipe("toy", build="fusionrec.trainer.recipes.toy.build:build")
