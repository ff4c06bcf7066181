"""The paper's reference numbers (Szegedy et al., "Intriguing properties of neural networks", 2014).

The one place they are typed. Errors and rates in percent; distortions are the mean minimum
per-pixel RMS distortion of the box-constrained L-BFGS attack (pixels in [0, 1]).
"""

from __future__ import annotations

SOURCE = "Szegedy et al. 2014"

# Table 1 (and the rows of Table 2): MNIST models trained on all 60000 training images.
TABLE1_MODELS = ("FC10(1e-4)", "FC10(1e-2)", "FC10(1)", "FC100-100-10", "FC200-200-10", "AE400-10")
TABLE1 = {
    "train": (6.7, 10.0, 21.2, 0.0, 0.0, 0.57),
    "test": (7.4, 9.4, 20.0, 1.64, 1.54, 1.9),
    "distortion": (0.062, 0.1, 0.14, 0.058, 0.065, 0.086),
}

# Table 2: error of the column's model (TABLE1_MODELS order) on the row's examples.
TABLE2_ADVERSARIAL = (  # one row per source model, TABLE1_MODELS order
    (100, 11.7, 22.7, 2, 3.9, 2.7),
    (87.1, 100, 35.2, 35.9, 27.3, 9.8),
    (71.9, 76.2, 100, 48.1, 47, 34.4),
    (28.9, 13.7, 21.1, 100, 6.6, 2),
    (38.2, 14, 23.8, 20.3, 100, 2.7),
    (23.4, 16, 24.8, 9.4, 6.6, 100),
)
TABLE2_NOISE = {0.1: (5.0, 10.1, 18.3, 0, 0, 0.8), 0.3: (15.6, 11.3, 22.7, 5, 4.3, 3.1)}  # by stddev

# Table 3: the cross-training-set models, trained on one half (P1 or P2) of the training set.
TABLE3_MODELS = ("FC100-100-10", "FC123-456-10", "FC100-100-10'")
TABLE3 = {
    "p1": (0.0, 0.0, 2.3),
    "p2": (2.4, 2.5, 0.0),
    "test": (2.0, 2.1, 2.1),
    "distortion": (0.062, 0.059, 0.058),
}

# Table 4: error of the column's model (TABLE3_MODELS order) on the row's examples.
TABLE4_ADVERSARIAL = ((100, 26.2, 5.9), (6.25, 100, 5.1), (8.2, 8.2, 100))
TABLE4_MATCHED_NOISE = (2.2, 2.6, 2.4)  # "Gaussian noise, same stddev": one row in the paper
TABLE4_AMPLIFIED = ((100, 98, 43), (96, 100, 22), (27, 50, 100))
TABLE4_AMPLIFIED_STDDEV = 0.1
TABLE4_NOISE = {0.1: (2.6, 2.8, 2.7)}

# Table 5: per-layer Lipschitz upper bounds of AlexNet on ImageNet (conv4 and FC1 not legible).
TABLE5_ALEXNET = {"conv1": 2.75, "conv2": 10, "conv3": 7, "conv5": 11, "FC2": 4, "FC3": 4}

# Section 4.2, end: test error of a 100-100-10 network by regularizer. The pool's is an upper
# bound ("below 1.2%"), dropout's approximate ("about 1.3%").
ADVERSARIAL_TRAINING_TEST_ERROR = {"weight_decay": 1.6, "dropout": 1.3, "pool": 1.2}
TABLE3_TRAINED_ON = ("p1", "p1", "p2")


def clean_errors(reference: str) -> tuple[float, float]:
    """(train error, test error), percent, of 'table1:<model>' (TABLE1_MODELS) or
    'table3:<model>' (TABLE3_MODELS; train = the model's own half)."""
    table, model = reference.split(":", 1)
    if table == "table1":
        j = TABLE1_MODELS.index(model)
        return TABLE1["train"][j], TABLE1["test"][j]
    if table == "table3":
        j = TABLE3_MODELS.index(model)
        return TABLE3[TABLE3_TRAINED_ON[j]][j], TABLE3["test"][j]
    raise KeyError(f"{reference!r}: expected 'table1:<model>' or 'table3:<model>'")


def table_name(reference: str) -> str:
    """'table1:FC10(1)' -> 'Table 1'."""
    return "Table " + reference.split(":", 1)[0].removeprefix("table")


# The essays in seeds/ (REFERENCE.md section 7).
ESSAY_IRIS_ACCURACY = 0.966  # essay 000: logistic regression on two Iris features, training set
ESSAY_BOTTLENECK_TEST_ACCURACY = 95  # essay 000: 784-50-20-2-4 on digits 0-3, percent, "about"
