#!/usr/bin/env python3
"""MediaPipe Python latency on the vision golden images, for comparison with `expllm bench --stage vision`.

  python bench_mediapipe.py --images DIR --task face_landmarker.task [--threads 1 2] [--runs 20] [--out FILE]

Needs a venv with mediapipe==0.10.21 and tflite-runtime==2.14.0 (see tests/golden/vision/README.md).
Prints JSON (and writes it to --out): per thread count and image
  - landmarker_ms: FaceLandmarker.detect() in IMAGE mode (num_faces=5, blendshapes on): detector +
    mesh per face + blendshapes per face, incl. MediaPipe's pre/post-processing; median, p10, p90 and min
    over --runs calls after 3 warm-up calls;
  - per-model inference of the same three .tflite files with the TFLite interpreter (XNNPACK, num_threads
    = the thread count): detector (1x128x128x3), mesh (1x256x256x3), blendshapes (1x146x2), on
    fixed real inputs, same statistics.
MediaPipe's Python API has no thread setting, so each thread count runs in a child process pinned with
sched_setaffinity to that many CPUs before the landmarker is created (XNNPACK then uses those cores).
The machine load average is recorded because other work on the machine skews the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = ["0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg",
          "single_face.jpg", "multi_face.jpg"]


def stats(ts):
    a = np.asarray(ts) * 1000.0
    return dict(median=round(float(np.median(a)), 3), p10=round(float(np.percentile(a, 10)), 3),
                p90=round(float(np.percentile(a, 90)), 3), min=round(float(a.min()), 3), n=len(a))


def timeit(fn, runs, warm=3):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return stats(ts)


def child(args):
    ncpu = args.child
    cpus = sorted(os.sched_getaffinity(0))[:ncpu]
    os.sched_setaffinity(0, set(cpus))
    import mediapipe as mp
    import tflite_runtime.interpreter as tflite
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision
    sys.path.insert(0, HERE)
    import mp_face_ref as R

    opts = vision.FaceLandmarkerOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=args.task), running_mode=vision.RunningMode.IMAGE,
        num_faces=5, output_face_blendshapes=True)
    lmk = vision.FaceLandmarker.create_from_options(opts)
    tmp = os.path.join("/tmp", f"bench-mediapipe-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    with zipfile.ZipFile(args.task) as z:
        z.extractall(tmp, ["face_detector.tflite", "face_landmarks_detector.tflite", "face_blendshapes.tflite"])

    def interp(name):
        it = tflite.Interpreter(model_path=os.path.join(tmp, name), num_threads=ncpu)
        it.allocate_tensors()
        i = it.get_input_details()[0]["index"]

        def run(x):
            it.set_tensor(i, x)
            it.invoke()
            return [it.get_tensor(o["index"]) for o in it.get_output_details()]
        return run
    det = interp("face_detector.tflite")
    mesh = interp("face_landmarks_detector.tflite")
    blend = interp("face_blendshapes.tflite")

    out = dict(cpus=cpus, images={}, models={})
    first = None
    for name in IMAGES:
        img = mp.Image.create_from_file(os.path.join(args.images, name))
        nf = len(lmk.detect(img).face_landmarks)
        out["images"][name] = dict(faces=nf, landmarker_ms=timeit(lambda: lmk.detect(img), args.runs))
        if first is None:
            first = np.ascontiguousarray(img.numpy_view()[..., :3])
    d = R.detect_faces(first, lambda x: tuple(det(x)))
    xm = R.mesh_input(first, d["rois"][0])
    lms = R.project_landmarks(mesh(xm)[0], d["rois"][0])
    xb = R.blendshapes_input(lms, first.shape[1], first.shape[0])
    out["models"]["face_detector"] = timeit(lambda: det(d["input"]), args.runs * 5)
    out["models"]["face_landmarks"] = timeit(lambda: mesh(xm), args.runs * 2)
    out["models"]["face_blendshapes"] = timeit(lambda: blend(xb), args.runs * 5)
    out["mediapipe"] = mp.__version__
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    res = dict(script="models/vision/bench_mediapipe.py", machine=dict(
        platform=platform.platform(), processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), python=platform.python_version()),
        loadavg_before=[round(x, 2) for x in os.getloadavg()], threads={})
    for n in args.threads:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--images", args.images, "--task", args.task,
                            "--runs", str(args.runs), "--child", str(n)], check=True, capture_output=True, text=True)
        res["threads"][str(n)] = json.loads(p.stdout.strip().splitlines()[-1])
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    s = json.dumps(res, indent=1)
    print(s)
    if args.out:
        open(args.out, "w").write(s + "\n")


if __name__ == "__main__":
    main()
