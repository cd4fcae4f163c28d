"""Class names and ids, in one place for every script."""

# Aff-Wild2 EXPR (ABAW): the id is the line value in the annotation files.
EXPR_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
EXPR_HEADER = ",".join(EXPR_CLASSES)
EXPR_TEMPLATE_HEADER = "image_location," + EXPR_HEADER
NUM_EXPR_CLASSES = len(EXPR_CLASSES)
IGNORE_LABEL = -1  # frames the annotators left out; never scored, never trained on

# DFEW: ids 0..6 here; the split files use 1..7 in this order (some copies 0..6).
DFEW_CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
NUM_DFEW_CLASSES = len(DFEW_CLASSES)
