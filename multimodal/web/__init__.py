"""A local web demo of a trained unCLIP stack: text to image, zero-shot classification of an uploaded image, and
search in an embedding index, in one page served by FastAPI::

    python -m multimodal.web --unclip runs/unclip-demo [--clip RUN] [--index DIR]

The app lives in :mod:`multimodal.web.app` (``create_app``, ``load_demo``); nothing is imported here, so that
``python -m multimodal.web --help`` pays for no model or web library.
"""
