"""GenSeg: a mask-to-image generator with a searchable architecture, trained end to end with the segmenter it serves."""
