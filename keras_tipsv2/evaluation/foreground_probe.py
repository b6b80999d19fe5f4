"""The foreground-segmentation linear probe of the official notebooks.

`pytorch/TIPS_foreground_segmentation_demo.ipynb` (google-deepmind/tips),
with NumPy in place of scikit-learn and SciPy:

1. alpha masks are box-filtered per 14x14 patch (stride 14);
2. only confident patches are kept (mean < 0.01 or > 0.99) and labelled
   `mean > 0`, as the notebook does;
3. an L2-regularised logistic regression (sklearn's objective,
   0.5 |w|^2 + C * sum of log-losses, intercept unpenalised) is fitted on
   the final normed patch tokens, C chosen by leave-one-image-out average
   precision over logspace(-7, 0, 8) (the notebook then uses C = 0.1);
4. per-patch probabilities get a 3x3 median filter (zero-padded, as
   `scipy.signal.medfilt2d`).
"""

import numpy as np

NOTEBOOK_CS = tuple(np.logspace(-7, 0, 8))


def patch_mask_means(masks, patch_size=14):
    """Mean of a (..., H, W) mask over each patch -> (..., H/p, W/p)."""
    masks = np.asarray(masks, dtype=np.float64)
    height, width = masks.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"Mask size {height}x{width} is not a multiple of the patch size "
            f"{patch_size}; resize it as the images are resized."
        )
    h, w = height // patch_size, width // patch_size
    blocks = masks.reshape(masks.shape[:-2] + (h, patch_size, w, patch_size))
    return blocks.mean(axis=(-3, -1))


def confident_patches(features, patch_means, low=0.01, high=0.99):
    """(x, y) of the patches whose label is clear.

    Args:
        features: (..., h, w, D) patch tokens.
        patch_means: (..., h, w) from `patch_mask_means`.

    Returns:
        x (N, D) and y (N,) int, y = mean > 0 (the notebook's labelling,
        so a kept patch with a mean in (0, 0.01) counts as foreground).
    """
    features = np.asarray(features)
    patch_means = np.asarray(patch_means)
    if features.shape[:-1] != patch_means.shape:
        raise ValueError(
            f"features {features.shape} and patch_means {patch_means.shape} "
            "must share their leading (..., h, w) shape."
        )
    keep = (patch_means < low) | (patch_means > high)
    x = features[keep]
    y = (patch_means[keep] > 0).astype(np.int64)
    return x, y


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logistic_objective(w, b, x, y, c):
    """sklearn's L2 logistic objective: 0.5 |w|^2 + C sum log(1 + e^-m)."""
    z = x @ w + b
    signed = np.where(y > 0, z, -z)
    return 0.5 * w @ w + c * np.sum(np.logaddexp(0.0, -signed))


def fit_logistic_regression(x, y, c=0.1, max_iter=100, tol=1e-10):
    """Minimises `logistic_objective` by damped Newton steps.

    The objective is strictly convex in w, so Newton with a backtracking
    line search reaches sklearn's optimum in a few dozen steps for the
    sizes of this probe (N ~ 10^4 patches, D <= 1536).

    Returns:
        (w (D,), b scalar).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"Expected x (N, D) and y (N,); got {x.shape} and {y.shape}.")
    if len(np.unique(y)) != 2:
        raise ValueError("Logistic regression needs both classes among the labels.")
    n, d = x.shape
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)
    theta = np.zeros(d + 1)
    penalty = np.ones(d + 1)
    penalty[-1] = 0.0  # the intercept is not regularised

    def objective(t):
        return logistic_objective(t[:-1], t[-1], x, y, c)

    value = objective(theta)
    for _ in range(max_iter):
        p = _sigmoid(xb @ theta)
        grad = c * xb.T @ (p - y) + penalty * theta
        hess = c * (xb.T * (p * (1 - p))) @ xb + np.diag(penalty)
        hess[-1, -1] += 1e-12  # keeps the solve defined when p saturates
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            candidate = theta - scale * step
            new_value = objective(candidate)
            if new_value <= value:
                break
            scale *= 0.5
        theta, decrease, value = candidate, value - new_value, new_value
        if decrease <= tol * max(1.0, abs(value)):
            break
    return theta[:-1], float(theta[-1])


def average_precision(y_true, scores):
    """sklearn's average precision: sum over thresholds of dR * P."""
    y_true = np.asarray(y_true) > 0
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, y_true = scores[order], y_true[order]
    # One point per distinct score: ties enter together.
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(y_true)[last]
    fp = (last + 1) - tp
    if tp[-1] == 0:
        return 0.0
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def median_filter_3x3(image):
    """3x3 median with zero padding: `scipy.signal.medfilt2d(x, 3)`."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"Expected a 2-D map; got shape {image.shape}.")
    padded = np.pad(image, 1)
    h, w = image.shape
    windows = [padded[i : i + h, j : j + w] for i in range(3) for j in range(3)]
    return np.median(np.stack(windows), axis=0)


class ForegroundProbe:
    """Logistic regression on patch tokens giving a foreground map.

    Example:
    ```python
    out = backbone.encode_images(images)                 # (B, h, w, D)
    x, y = confident_patches(out["patch_tokens"], patch_mask_means(masks))
    probe = ForegroundProbe(c=0.1).fit(x, y)
    fg = probe.predict_map(test_tokens)                  # (h, w) in [0, 1]
    ```
    """

    def __init__(self, c=0.1):
        self.c = c
        self.w = None
        self.b = None

    def fit(self, x, y):
        self.w, self.b = fit_logistic_regression(x, y, self.c)
        return self

    def predict_proba(self, x):
        """P(foreground) per row of x (N, D)."""
        if self.w is None:
            raise ValueError("Call fit() before predicting.")
        return _sigmoid(np.asarray(x, dtype=np.float64) @ self.w + self.b)

    def predict_map(self, patch_tokens, median_filter=True):
        """(h, w, D) tokens -> (h, w) probabilities, median-filtered."""
        patch_tokens = np.asarray(patch_tokens)
        h, w, d = patch_tokens.shape
        scores = self.predict_proba(patch_tokens.reshape(h * w, d)).reshape(h, w)
        return median_filter_3x3(scores) if median_filter else scores


def choose_c_leave_one_image_out(x, y, image_index, cs=NOTEBOOK_CS):
    """The C with the best mean held-out-image average precision.

    Returns:
        (best C, scores (num_images, len(cs))).
    """
    image_index = np.asarray(image_index)
    images = np.unique(image_index)
    scores = np.zeros((len(images), len(cs)))
    for i, image in enumerate(images):
        train = image_index != image
        for j, c in enumerate(cs):
            probe = ForegroundProbe(c).fit(x[train], y[train])
            scores[i, j] = average_precision(y[~train], probe.predict_proba(x[~train]))
    return float(cs[int(np.argmax(scores.mean(axis=0)))]), scores
