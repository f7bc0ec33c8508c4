"""Send a stream of photos to the classifier, optionally shifted, to watch drift being detected.

python -m catdog_runtime.traffic --count 200                 # like the training data
python -m catdog_runtime.traffic --count 200 --shift darker  # then run evaluate/scheduled
"""

from __future__ import annotations

import argparse

from model_lib.settings import PlatformSettings, PortSettings
from model_lib.traffic import SHIFTS, send_traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    service_url = PlatformSettings.from_env().service_url
    default_url = service_url or f"http://127.0.0.1:{PortSettings.from_env().bento_port}"
    parser.add_argument("--url", default=default_url)
    parser.add_argument("--folder", default="test_images", help="images to send (cycled)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--shift", choices=SHIFTS, default="none")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    statuses = send_traffic(args.url, args.folder, args.count, args.shift, args.concurrency)
    print(f"sent {args.count} images (shift: {args.shift}) to {args.url}: status counts {statuses}")
    if set(statuses) != {200}:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
