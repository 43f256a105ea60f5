"""Examples for the two reading sides of the segmenter, kept working by tests.

- :mod:`examples.recommendation_service`: a consumer of ``segments.changes`` that keeps its
  own view of every user's segment, bootstrapped from ``segments.current``.
- :mod:`examples.campaign_engine`: lists a segment's users and their features from Redis.
"""
