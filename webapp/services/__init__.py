"""The web app's service layer: plain Python over the run directory and the engine.

Nothing here imports streamlit, and nothing imports torch or transformers at module level, so pages
stay fast to load; the heavy work happens in the trainer's own processes or on an explicit action.
"""
