"""Image handling without Kedro: decoding to 8-bit RGB, synthetic scenes, irregular masks."""
