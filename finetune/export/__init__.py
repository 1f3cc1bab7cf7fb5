"""A finished run leaving the run folder: a merged model or an adapter on disk (local.py,
``python -m finetune.export``), a push to the Hub (hub.py) and the model card that goes with both (model_card.py)."""
