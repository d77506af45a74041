"""The auto-trainer: data loading and validation, techniques, successive-halving search, final
fine-tune, evaluation and outputs. Modules that need torch import it inside, so that the data layer
and the search schedule stay usable (and testable) without it."""
