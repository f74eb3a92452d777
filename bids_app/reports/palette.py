"""What every figure and page of the reports shares: the targets' colours and names, figure size."""

#: Colour of each target in every figure (connectivity first, comparators after), for drawing.
TARGET_COLOURS = {"connectivity": "#d62728", "F3_1020": "#1f77b4", "F3_beam": "#2ca02c",
                  "5cm": "#9467bd", "motor_hand": "#7f7f7f"}

#: The same colours in words, for legends and captions (a reader does not decode hex codes).
COLOUR_NAMES = {"connectivity": "red", "F3_1020": "blue", "F3_beam": "green", "5cm": "purple",
                "motor_hand": "grey"}

#: What each row of the targets table is, in words.
TARGET_LABELS = {"connectivity": "connectivity target", "F3_1020": "10-20 F3", "F3_beam": "Beam F3",
                 "5cm": "5 cm rule", "motor_hand": "motor hand area (dose reference)"}

#: Laptop-sized figures: about 1000 px wide at 100 dpi.
DPI = 100
WIDTH_IN = 10.0


def colour_legend(names):
    """'connectivity (red), F3_1020 (blue), ...' for the targets present, in the palette's order."""
    present = set(names)
    return ", ".join(f"{name} ({colour})" for name, colour in COLOUR_NAMES.items() if name in present)
