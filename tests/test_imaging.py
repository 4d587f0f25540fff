"""Pictures drawn for people: labels must stay readable and not spill past their text."""

import numpy as np

from sensors.imaging import outlined_text


def test_outlined_text_halo_ends_with_the_text():
    # On a mid-grey canvas the white text and its dark halo must span the same columns (within the 1-px halo);
    # a halo drawn with a thicker stroke runs ~16 px past the end of the text in OpenCV 5.
    img = np.full((40, 400, 3), 128, np.uint8)
    outlined_text(img, "test-00-night  frame 12  [night, lamps off]", (8, 26), 0.6)
    lum = img.mean(axis=2)
    white = np.nonzero((lum > 200).any(axis=0))[0]
    dark = np.nonzero((lum < 40).any(axis=0))[0]
    assert white.size and dark.size
    assert dark.max() <= white.max() + 2 and dark.min() >= white.min() - 2
