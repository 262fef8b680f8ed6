"""Data: synthetic generator, annotation readers, TFDS builders and the tf.data pipeline."""
