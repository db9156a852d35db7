"""`tatl serve`: the time from uploading a 1024x768 JPEG to its layers being ready, and the gallery of 1,000 images.

A real uvicorn server on a free localhost port (in a thread of this process) over a fresh folder, asked over HTTP:
- upload to layers: POST /api/images with one new 1024x768 JPEG (the server predicts it at once: the whole
  variant 1,2,3 pipeline, U+Link, at 256 px stage inputs), then GET the image record, the display copy and every
  display-size layer PNG the page draws. Median of --uploads uploads after one warm-up.
- gallery of 1,000 images: GET /api/images (the gallery's rows) and every thumbnail once cold (made and cached)
  and once warm (cached), and, when /usr/bin/chromium is installed, the page opened in headless Chromium until the
  gallery is ready (1,000 cards; thumbnails load lazily as they scroll into view).

The run: the smallest real run (benchmarks/common.tiny_run: one epoch on synthetic 64 px images, as good as
random, which is all a timing needs) predicting at 256 px (common.resized_run), or --run RUN. Prints the figures
and writes benchmarks/out/serve.json.

    .venv/bin/python benchmarks/bench_serve.py [--run RUN] [--uploads 5] [--gallery 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import resized_run, tiny_run, write_result

CHROMIUM = Path("/usr/bin/chromium")


def jpeg(seed: int, size=(1024, 768)) -> bytes:
    """A skin-like picture: a smooth background and a darker blob, with noise, so the JPEG is not trivially small."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    blob = ((xs - size[0] / 2) ** 2 / (size[0] / 4) ** 2 + (ys - size[1] / 2) ** 2 / (size[1] / 4) ** 2) < 1
    pixels = np.stack([np.full(blob.shape, c, np.float32) for c in (220, 170, 150)], -1)
    pixels[blob] *= 0.5
    pixels += rng.normal(0, 8, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def start(run: Path, folder: Path):
    import uvicorn

    from tatl.serving.app import create_app
    from tatl.serving.security import ServerSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServerSettings(run, folder, port=port))
    app.state.versions.predictor()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def upload_to_layers(client, index: int) -> float:
    started = time.perf_counter()
    name = f"upload_{index}"
    response = client.post("/api/images", files=[("files", (f"{name}.jpg", jpeg(index), "image/jpeg"))])
    response.raise_for_status()
    detail = client.get(f"/api/images/{name}").json()
    client.get(f"/api/images/{name}/image?size=display").raise_for_status()
    for layer in ["lesion", "abnormal", *detail["prediction"]["attributes"]]:
        client.get(f"/api/images/{name}/predictions/{layer}.png?display=1").raise_for_status()
    return time.perf_counter() - started


def gallery_seconds(client, count: int) -> dict:
    def listing_and_thumbnails() -> tuple[float, float]:
        started = time.perf_counter()
        rows = client.get("/api/images").json()
        listed = time.perf_counter() - started
        for row in rows:
            client.get(f"/api/images/{row['id']}/image?size=thumbnail").raise_for_status()
        assert len(rows) == count, len(rows)
        return listed, time.perf_counter() - started

    cold = listing_and_thumbnails()
    warm = listing_and_thumbnails()
    return {"listing_s": warm[0], "listing_and_thumbnails_cold_s": cold[1], "listing_and_thumbnails_warm_s": warm[1]}


def page_seconds(url: str, count: int) -> float | None:
    if not CHROMIUM.is_file():
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        times = []
        for _ in range(3):
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("body[data-ready=gallery]")
            times.append(time.perf_counter() - started)
            assert page.locator(".card").count() == count
        browser.close()
    return statistics.median(times)


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: a tiny run predicting at 256 px)")
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--gallery", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        scratch = Path(scratch)
        run = args.run or resized_run(tiny_run(scratch), 256, scratch)
        uploads = scratch / "uploads"
        uploads.mkdir()
        server, url = start(run, uploads)
        with httpx.Client(base_url=url, timeout=600) as client:
            upload_to_layers(client, 0)  # warm-up: first use of every network
            seconds = [upload_to_layers(client, i) for i in range(1, args.uploads + 1)]
        server.should_exit = True
        gallery = scratch / "gallery"
        gallery.mkdir()
        for i in range(args.gallery):
            (gallery / f"img_{i:04d}.jpg").write_bytes(jpeg(i))
        server, url = start(run, gallery)
        with httpx.Client(base_url=url, timeout=600) as client:
            listing = gallery_seconds(client, args.gallery)
        listing["page_ready_s"] = page_seconds(url + "/", args.gallery)
        server.should_exit = True
    result = {"run": str(args.run or "tiny run at 256 px"), "threads": args.threads,
              "upload_to_layers_s": {"median": statistics.median(seconds), "all": seconds},
              "gallery": {"images": args.gallery, **listing}}
    print(f"upload to layers (1024x768 JPEG, median of {len(seconds)}): {statistics.median(seconds):.2f} s")
    print(f"gallery of {args.gallery}: rows {listing['listing_s']:.3f} s; rows + every thumbnail cold "
          f"{listing['listing_and_thumbnails_cold_s']:.1f} s, cached {listing['listing_and_thumbnails_warm_s']:.2f} s"
          + (f"; page ready in Chromium {listing['page_ready_s']:.2f} s" if listing["page_ready_s"] else ""))
    print(f"wrote {write_result('serve', result)}")


if __name__ == "__main__":
    main()
