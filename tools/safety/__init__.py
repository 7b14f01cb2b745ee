"""Building and measuring the content-safety classifier that ships in modelport/safety/model/.

Run from the repository root with the project's interpreter:

- `python -m tools.safety.trainset`: rebuild `data/train.jsonl` from `data/train_sources/`;
- `python -m tools.safety.train`: retrain the shipped delta and recalibrate its thresholds;
- `python -m tools.safety.evaluate`: measure a backend on the frozen `data/eval.jsonl`;
- `python -m tools.safety.model_answers`: regenerate the chat model's answers used as data.

Nothing here is imported by the server: the runtime needs only the shipped weights.
"""
