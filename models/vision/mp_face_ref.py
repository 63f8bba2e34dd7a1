"""Reference (Python/numpy) re-implementation of the MediaPipe Face Landmarker pre/post-processing.

Written from MediaPipe's graph configuration (tasks/cc/vision/face_detector/face_detector_graph.cc,
face_landmarker/face_landmarks_detector_graph.cc, face_blendshapes_graph.cc and the calculators
they use) so that the Rust front-end has something small and readable to mirror and to debug
against. It is used by models/vision/convert.py (real face crops for verification and int8
calibration) and by tests/golden/vision/make_vision_goldens.py (intermediate goldens).
Needs only numpy; cv2 is optional (used for the crop warp when present, as MediaPipe uses OpenCV's
warpPerspective on CPU; the numpy fallback differs by at most ~1 grey level).

Conventions (all as in MediaPipe):
- A "rect" is (x_center, y_center, width, height, rotation) in coordinates normalised by the image
  width/height; rotation in radians, positive = clockwise on screen (y axis points down).
- Tensor pixel (col j, row i) of an out_w x out_h crop of a rect samples the source image at pixel
  position  c + (j/out_w - 0.5) * w_px * u + (i/out_h - 0.5) * h_px * v,  with c = rect centre in
  pixels, w_px = width*W, h_px = height*H, u = (cos r, sin r), v = (-sin r, cos r); bilinear,
  integer source coordinates are pixel centres (cv::warpPerspective with the 4 corners of the rotated
  rect mapped to (0,0), (out_w,0), (out_w,out_h), (0,out_h)).
"""

from __future__ import annotations

import math

import numpy as np

try:  # optional, matches MediaPipe's CPU path bit-for-bit-ish
    import cv2  # type: ignore
except Exception:  # pragma: no cover
    cv2 = None

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

DETECTOR_INPUT = 128
MESH_INPUT = 256
CLASSIFIER_INPUT = 64

# SsdAnchorsCalculator options of FaceDetectorGraph (face_detector_graph.cc)
ANCHOR_OPTIONS = dict(num_layers=4, min_scale=0.1484375, max_scale=0.75, input_size_height=128,
                      input_size_width=128, anchor_offset_x=0.5, anchor_offset_y=0.5,
                      strides=[8, 16, 16, 16], aspect_ratios=[1.0], fixed_anchor_size=True,
                      interpolated_scale_aspect_ratio=1.0)
# TensorsToDetectionsCalculator options of FaceDetectorGraph
DETECTION_OPTIONS = dict(num_classes=1, num_boxes=896, num_coords=16, box_coord_offset=0,
                         keypoint_coord_offset=4, num_keypoints=6, num_values_per_keypoint=2,
                         sigmoid_score=True, score_clipping_thresh=100.0, reverse_output_order=True,
                         x_scale=128.0, y_scale=128.0, w_scale=128.0, h_scale=128.0)
# FaceLandmarker (tasks API) defaults: FaceDetectorGraphOptions.min_detection_confidence = 0.5,
# min_suppression_threshold = 0.5 (the proto default; the legacy face_detection_short_range.pbtxt
# graph of the old Solutions API used 0.3), FaceLandmarksDetectorGraphOptions
# .min_detection_confidence (face presence) = 0.5.
MIN_DETECTION_SCORE = 0.5
MIN_SUPPRESSION_THRESHOLD = 0.5
LEGACY_MIN_SUPPRESSION_THRESHOLD = 0.3
MIN_PRESENCE_SCORE = 0.5
ROI_SCALE = 1.5  # RectTransformationCalculator scale_x = scale_y = 1.5 (no shift, no square_long)

DETECTOR_KEYPOINTS = ["eye_a", "eye_b", "nose_tip", "mouth_center", "ear_tragion_a", "ear_tragion_b"]

# face_blendshapes_graph.cc kLandmarksSubsetIdxs
BLENDSHAPE_LANDMARK_SUBSET = [
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39,
    40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70, 78, 80,
    81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133,
    136, 144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160,
    161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246,
    249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295,
    296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324, 332, 334,
    336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382,
    384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477]
assert len(BLENDSHAPE_LANDMARK_SUBSET) == 146

BLENDSHAPE_NAMES = [
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight"]
assert len(BLENDSHAPE_NAMES) == 52

EMOTION_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]

# ---------------------------------------------------------------------------------------------
# Face detector (BlazeFace short range)
# ---------------------------------------------------------------------------------------------


def _calculate_scale(min_scale, max_scale, stride_index, num_strides):
    if num_strides == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * stride_index / (num_strides - 1.0)


def ssd_anchors(o=ANCHOR_OPTIONS):
    """SsdAnchorsCalculator. Returns float32 array (896, 4): x_center, y_center, w, h (w = h = 1
    because fixed_anchor_size). Order: layer group, then row y, then column x, then anchor."""
    anchors = []
    strides = o["strides"]
    n = o["num_layers"]
    layer_id = 0
    while layer_id < n:
        anchor_height, anchor_width, aspect_ratios, scales = [], [], [], []
        last_same = layer_id
        while last_same < n and strides[last_same] == strides[layer_id]:
            scale = _calculate_scale(o["min_scale"], o["max_scale"], last_same, n)
            for ar in o["aspect_ratios"]:
                aspect_ratios.append(ar)
                scales.append(scale)
            if o["interpolated_scale_aspect_ratio"] > 0.0:
                scale_next = 1.0 if last_same == n - 1 else _calculate_scale(
                    o["min_scale"], o["max_scale"], last_same + 1, n)
                scales.append(math.sqrt(scale * scale_next))
                aspect_ratios.append(o["interpolated_scale_aspect_ratio"])
            last_same += 1
        for ar, sc in zip(aspect_ratios, scales):
            r = math.sqrt(ar)
            anchor_height.append(sc / r)
            anchor_width.append(sc * r)
        stride = strides[layer_id]
        fh = int(math.ceil(o["input_size_height"] / stride))
        fw = int(math.ceil(o["input_size_width"] / stride))
        for y in range(fh):
            for x in range(fw):
                for a in range(len(anchor_height)):
                    xc = (x + o["anchor_offset_x"]) / fw
                    yc = (y + o["anchor_offset_y"]) / fh
                    if o["fixed_anchor_size"]:
                        anchors.append((xc, yc, 1.0, 1.0))
                    else:
                        anchors.append((xc, yc, anchor_width[a], anchor_height[a]))
        layer_id = last_same
    return np.asarray(anchors, dtype=np.float32)


def letterbox_roi(width, height, out_w=DETECTOR_INPUT, out_h=DETECTOR_INPUT):
    """ImageToTensorCalculator with keep_aspect_ratio=true on the whole image (PadRoi).
    Returns (roi_px, padding) where roi_px = (cx, cy, w, h, rotation) in pixels and
    padding = (left, top, right, bottom) normalised by the tensor size."""
    tensor_ar = out_h / out_w
    roi_ar = height / width
    w, h = float(width), float(height)
    hpad = vpad = 0.0
    if tensor_ar > roi_ar:
        h = w * tensor_ar
        vpad = (1.0 - roi_ar / tensor_ar) / 2.0
    else:
        w = h / tensor_ar
        hpad = (1.0 - tensor_ar / roi_ar) / 2.0
    return (width / 2.0, height / 2.0, w, h, 0.0), (hpad, vpad, hpad, vpad)


def warp_rect(img, roi_px, out_w, out_h, border="replicate"):
    """Crop the rotated rect roi_px = (cx, cy, w, h, rot) in pixels of an HxWx3 uint8 image to an
    out_h x out_w x 3 uint8 image (bilinear). border: 'zero' or 'replicate'."""
    cx, cy, w, h, r = roi_px
    cos, sin = math.cos(r), math.sin(r)
    ux, uy = cos * w, sin * w
    vx, vy = -sin * h, cos * h
    ox = cx - 0.5 * ux - 0.5 * vx
    oy = cy - 0.5 * uy - 0.5 * vy
    # dst (j, i) -> src = o + (j/out_w) * (ux, uy) + (i/out_h) * (vx, vy)
    m_inv = np.array([[ux / out_w, vx / out_h, ox], [uy / out_w, vy / out_h, oy]], dtype=np.float64)
    if cv2 is not None:  # exactly as image_to_tensor_converter_opencv.cc
        mode = cv2.BORDER_CONSTANT if border == "zero" else cv2.BORDER_REPLICATE
        src_pts = cv2.boxPoints(((cx, cy), (w, h), r * 180.0 / math.pi)).astype(np.float32)
        dst_pts = np.array([[0, out_h], [0, 0], [out_w, 0], [out_w, out_h]], dtype=np.float32)
        m = cv2.getPerspectiveTransform(src_pts, dst_pts)
        return cv2.warpPerspective(img, m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                                   borderMode=mode, borderValue=0)
    return _warp_numpy(img, m_inv, out_w, out_h, border)


def _warp_numpy(img, m_inv, out_w, out_h, border):
    jj, ii = np.meshgrid(np.arange(out_w, dtype=np.float64), np.arange(out_h, dtype=np.float64))
    sx = m_inv[0, 0] * jj + m_inv[0, 1] * ii + m_inv[0, 2]
    sy = m_inv[1, 0] * jj + m_inv[1, 1] * ii + m_inv[1, 2]
    return sample_bilinear(img.astype(np.float32), sx, sy, border).round().clip(0, 255).astype(np.uint8)


def sample_bilinear(img, sx, sy, border="replicate"):
    """Bilinear sampling of a float HxW or HxWxC image at float pixel positions (pixel centres at
    integers)."""
    H, W = img.shape[:2]
    x0 = np.floor(sx).astype(np.int64)
    y0 = np.floor(sy).astype(np.int64)
    fx = (sx - x0).astype(np.float32)
    fy = (sy - y0).astype(np.float32)
    if img.ndim == 3:
        fx = fx[..., None]
        fy = fy[..., None]

    def px(y, x):
        if border == "zero":
            valid = (x >= 0) & (x < W) & (y >= 0) & (y < H)
            v = img[np.clip(y, 0, H - 1), np.clip(x, 0, W - 1)]
            return np.where(valid[..., None] if img.ndim == 3 else valid, v, 0.0)
        return img[np.clip(y, 0, H - 1), np.clip(x, 0, W - 1)]

    top = px(y0, x0) * (1 - fx) + px(y0, x0 + 1) * fx
    bot = px(y0 + 1, x0) * (1 - fx) + px(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bot * fy


def detector_input(img):
    """Whole-image letterboxed 1x128x128x3 float32 tensor in [-1, 1] (BORDER_ZERO: padding is
    pixel value 0 -> -1.0), plus the letterbox padding."""
    H, W = img.shape[:2]
    roi, pad = letterbox_roi(W, H)
    crop = warp_rect(img, roi, DETECTOR_INPUT, DETECTOR_INPUT, border="zero")
    x = crop.astype(np.float32) * (2.0 / 255.0) - 1.0
    return x[None], pad


def decode_detections(regressors, classificators, anchors=None, min_score=MIN_DETECTION_SCORE):
    """TensorsToDetectionsCalculator. regressors (896, 16), classificators (896,) raw logits.
    Returns list of dicts in letterboxed-tensor normalised coords, in anchor order."""
    if anchors is None:
        anchors = ssd_anchors()
    o = DETECTION_OPTIONS
    raw = np.asarray(regressors, dtype=np.float32).reshape(896, 16)
    logit = np.asarray(classificators, dtype=np.float64).reshape(896)
    logit = np.clip(logit, -o["score_clipping_thresh"], o["score_clipping_thresh"])
    scores = 1.0 / (1.0 + np.exp(-logit))
    out = []
    for i in range(896):
        if scores[i] < min_score:
            continue
        ax, ay, aw, ah = anchors[i]
        # reverse_output_order: x, y, w, h
        xc = raw[i, 0] / o["x_scale"] * aw + ax
        yc = raw[i, 1] / o["y_scale"] * ah + ay
        w = raw[i, 2] / o["w_scale"] * aw
        h = raw[i, 3] / o["h_scale"] * ah
        if w < 0 or h < 0:
            continue
        kps = []
        for k in range(6):
            kx = raw[i, 4 + 2 * k] / o["x_scale"] * aw + ax
            ky = raw[i, 4 + 2 * k + 1] / o["y_scale"] * ah + ay
            kps.append((float(kx), float(ky)))
        out.append(dict(anchor=i, score=float(scores[i]), xmin=float(xc - w / 2), ymin=float(yc - h / 2),
                        width=float(w), height=float(h), keypoints=kps))
    return out


def _iou(a, b):
    ax0, ay0, ax1, ay1 = a["xmin"], a["ymin"], a["xmin"] + a["width"], a["ymin"] + a["height"]
    bx0, by0, bx1, by1 = b["xmin"], b["ymin"], b["xmin"] + b["width"], b["ymin"] + b["height"]
    ix0, iy0, ix1, iy1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if ix1 <= ix0 or iy1 <= iy0:
        return 0.0
    inter = (ix1 - ix0) * (iy1 - iy0)
    union = a["width"] * a["height"] + b["width"] * b["height"] - inter
    return inter / union if union > 0 else 0.0


def weighted_nms(dets, min_suppression_threshold=MIN_SUPPRESSION_THRESHOLD):
    """NonMaxSuppressionCalculator, algorithm WEIGHTED, overlap INTERSECTION_OVER_UNION.
    Candidates (IoU > threshold with the current best, the best itself included) are averaged with
    their scores as weights (box corners and keypoints); the score stays the best one's."""
    remained = sorted(dets, key=lambda d: -d["score"])
    out = []
    while remained:
        best = remained[0]
        cands, rest = [], []
        for d in remained:
            (cands if _iou(d, best) > min_suppression_threshold else rest).append(d)
        wd = dict(best)
        if cands:
            tot = sum(c["score"] for c in cands)
            xmin = sum(c["xmin"] * c["score"] for c in cands) / tot
            ymin = sum(c["ymin"] * c["score"] for c in cands) / tot
            xmax = sum((c["xmin"] + c["width"]) * c["score"] for c in cands) / tot
            ymax = sum((c["ymin"] + c["height"]) * c["score"] for c in cands) / tot
            kps = []
            for k in range(6):
                kps.append((sum(c["keypoints"][k][0] * c["score"] for c in cands) / tot,
                            sum(c["keypoints"][k][1] * c["score"] for c in cands) / tot))
            wd.update(xmin=xmin, ymin=ymin, width=xmax - xmin, height=ymax - ymin, keypoints=kps,
                      merged=len(cands))
        out.append(wd)
        if len(rest) == len(remained):
            break
        remained = rest
    return out


def unletterbox_detection(d, pad):
    """DetectionProjectionCalculator with the letterbox matrix: tensor-normalised -> image-normalised."""
    l, t, r, b = pad
    sx, sy = 1.0 - l - r, 1.0 - t - b
    fx = lambda x: (x - l) / sx  # noqa: E731
    fy = lambda y: (y - t) / sy  # noqa: E731
    xmin, ymin = fx(d["xmin"]), fy(d["ymin"])
    xmax, ymax = fx(d["xmin"] + d["width"]), fy(d["ymin"] + d["height"])
    nd = dict(d)
    nd.update(xmin=xmin, ymin=ymin, width=xmax - xmin, height=ymax - ymin,
              keypoints=[(fx(x), fy(y)) for x, y in d["keypoints"]])
    return nd


def normalize_radians(a):
    return a - 2 * math.pi * math.floor((a - (-math.pi)) / (2 * math.pi))


def detection_to_rect(d, width, height):
    """DetectionsToRectsCalculator (NORM_RECTS, rotation from keypoint 0 -> keypoint 1, target 0)."""
    xc = d["xmin"] + d["width"] / 2
    yc = d["ymin"] + d["height"] / 2
    (x0, y0), (x1, y1) = d["keypoints"][0], d["keypoints"][1]
    x0, x1 = x0 * width, x1 * width
    y0, y1 = y0 * height, y1 * height
    rot = normalize_radians(0.0 - math.atan2(-(y1 - y0), x1 - x0))
    return (xc, yc, d["width"], d["height"], rot)


def expand_rect(rect, scale=ROI_SCALE):
    """RectTransformationCalculator with scale_x = scale_y = 1.5, no shift, no squaring."""
    xc, yc, w, h, r = rect
    return (xc, yc, w * scale, h * scale, r)


def detect_faces(img, run_detector, min_score=MIN_DETECTION_SCORE,
                 min_suppression_threshold=MIN_SUPPRESSION_THRESHOLD, anchors=None):
    """Whole detector stage. run_detector(x: 1x128x128x3) -> (regressors (1,896,16), scores (1,896,1)).
    Returns dict with the tensor, raw detections, nms detections (tensor coords), detections in image
    normalised coords, face rects and expanded (mesh ROI) rects."""
    H, W = img.shape[:2]
    x, pad = detector_input(img)
    reg, cls = run_detector(x)
    raw = decode_detections(reg, cls, anchors, min_score)
    nms = weighted_nms(raw, min_suppression_threshold)
    dets = [unletterbox_detection(d, pad) for d in nms]
    rects = [detection_to_rect(d, W, H) for d in dets]
    rois = [expand_rect(r) for r in rects]
    return dict(input=x, padding=pad, regressors=reg, classificators=cls, raw=raw, nms=nms,
                detections=dets, rects=rects, rois=rois)


# ---------------------------------------------------------------------------------------------
# Face mesh
# ---------------------------------------------------------------------------------------------


def rect_to_px(rect, width, height):
    xc, yc, w, h, r = rect
    return (xc * width, yc * height, w * width, h * height, r)


def mesh_input(img, roi):
    """ImageToTensorCalculator for the mesh model: ROI (no aspect keeping, BORDER_REPLICATE),
    256x256, float [0, 1]."""
    H, W = img.shape[:2]
    crop = warp_rect(img, rect_to_px(roi, W, H), MESH_INPUT, MESH_INPUT, border="replicate")
    return (crop.astype(np.float32) / 255.0)[None]


def project_landmarks(raw1434, roi):
    """TensorsToLandmarksCalculator (x, y, z divided by 256) + LandmarkProjectionCalculator.
    Returns (478, 3) in image-normalised coordinates (z scaled by the rect width like x)."""
    lm = np.asarray(raw1434, dtype=np.float64).reshape(478, 3) / MESH_INPUT
    xc, yc, w, h, r = roi
    x = lm[:, 0] - 0.5
    y = lm[:, 1] - 0.5
    c, s = math.cos(r), math.sin(r)
    nx = (c * x - s * y) * w + xc
    ny = (s * x + c * y) * h + yc
    nz = lm[:, 2] * w
    return np.stack([nx, ny, nz], axis=1)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-float(x)))


def landmarks_bbox(lms_norm, width, height):
    """Axis-aligned bounding box of the landmarks in pixels (xmin, ymin, xmax, ymax)."""
    xs = lms_norm[:, 0] * width
    ys = lms_norm[:, 1] * height
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


# ---------------------------------------------------------------------------------------------
# Blendshapes
# ---------------------------------------------------------------------------------------------


def blendshapes_input(lms_norm, width, height):
    """146-landmark subset -> (1, 146, 2) float32 of (x * W, y * H) (LandmarksToTensorCalculator with
    attributes X, Y and the image size)."""
    sub = np.asarray(lms_norm)[BLENDSHAPE_LANDMARK_SUBSET, :2].astype(np.float64)
    sub = sub * np.array([width, height], dtype=np.float64)
    return sub.astype(np.float32)[None]


# ---------------------------------------------------------------------------------------------
# Expression classifier crop (our rule, not MediaPipe's; fer's mini-Xception input)
# ---------------------------------------------------------------------------------------------

# Crop rule "aligned-square-1.2": see classifier_crop().
CLASSIFIER_CROP_RULE = (
    "aligned-square-1.2: points = the 478 landmarks in pixels (x*W, y*H); angle a = atan2(y263 - y33, "
    "x263 - x33) (outer eye corners, image y down); express points in the rotated frame "
    "u = x*cos a + y*sin a, v = -x*sin a + y*cos a; take their bounding box in (u, v); the crop is the "
    "square centred on that box's centre (mapped back to x, y), side s = 1.2 * max(box width, box height), "
    "axes e_u = (cos a, sin a), e_v = (-sin a, cos a). Output pixel (row i, col j), i, j in 0..63, samples "
    "the grey image at centre + ((j + 0.5)/64 - 0.5) * s * e_u + ((i + 0.5)/64 - 0.5) * s * e_v with "
    "bilinear interpolation (integer coordinates are pixel centres, out-of-image reads clamp to the "
    "nearest edge pixel). Grey = 0.299*R + 0.587*G + 0.114*B computed in float on the 8-bit RGB image "
    "(no rounding). Model input = (grey/255 - 0.5) * 2, shape 1x64x64x1.")


def classifier_crop(img_rgb, lms_norm, side_scale=1.2):
    H, W = img_rgb.shape[:2]
    pts = np.asarray(lms_norm)[:, :2] * np.array([W, H], dtype=np.float64)
    a = math.atan2(pts[263, 1] - pts[33, 1], pts[263, 0] - pts[33, 0])
    c, s = math.cos(a), math.sin(a)
    u = pts[:, 0] * c + pts[:, 1] * s
    v = -pts[:, 0] * s + pts[:, 1] * c
    uc, vc = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2
    side = side_scale * max(u.max() - u.min(), v.max() - v.min())
    cx, cy = uc * c - vc * s, uc * s + vc * c
    grey = img_rgb[..., 0].astype(np.float32) * 0.299 + img_rgb[..., 1].astype(np.float32) * 0.587 \
        + img_rgb[..., 2].astype(np.float32) * 0.114
    n = CLASSIFIER_INPUT
    t = (np.arange(n, dtype=np.float64) + 0.5) / n - 0.5
    jj, ii = np.meshgrid(t, t)
    sx = cx + jj * side * c - ii * side * s
    sy = cy + jj * side * s + ii * side * c
    g = sample_bilinear(grey, sx, sy, "replicate").astype(np.float32)
    x = ((g / 255.0) - 0.5) * 2.0
    info = dict(center=(float(cx), float(cy)), side=float(side), angle=float(a))
    return x[None, :, :, None].astype(np.float32), g, info
