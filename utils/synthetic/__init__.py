"""Procedural faces, voices and keypoints for the demo datasets (make_demo_data.py)."""
