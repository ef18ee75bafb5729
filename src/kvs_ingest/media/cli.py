"""`kvs-ingest decode FILE... -o out.wav`: decode recorded chunks the way the service does.

Each file is one WebSocket message, fed in order through one StreamDecoder, so a user can find
out why a browser's recording fails (the error names the file it happened in) and the tests can
drive the pipeline from the command line. What was decoded before an error is still written.
"""

from __future__ import annotations

import argparse
import sys
import wave
from pathlib import Path

from kvs_ingest.media.decoder import StreamDecoder
from kvs_ingest.media.errors import MediaError
from kvs_ingest.media.pcm import SAMPLE_RATE
from kvs_ingest.media.sniff import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="chunks, in order")
    parser.add_argument("-o", "--output", type=Path, required=True, help="WAV file to write")
    parser.add_argument("--format", choices=FORMATS, help="container (default: sniffed)")
    parser.add_argument("--rate", type=int, help="sample rate of raw PCM input")
    parser.add_argument("--channels", type=int, default=1, help="channels of raw PCM input")


def run(args: argparse.Namespace) -> int:
    status = 0
    current: Path | None = None
    with wave.open(str(args.output), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        try:
            decoder = StreamDecoder(args.format, rate=args.rate, channels=args.channels)
            for current in args.files:
                for pcm in decoder.feed(current.read_bytes()):
                    wav.writeframes(pcm.data)
            current = None
            for pcm in decoder.flush():
                wav.writeframes(pcm.data)
        except MediaError as exc:
            where = f"{current}: " if current is not None else ""
            print(f"kvs-ingest decode: {where}{exc}", file=sys.stderr)
            status = 1
        except OSError as exc:
            print(f"kvs-ingest decode: {exc}", file=sys.stderr)
            return 2
        else:
            print(
                f"{args.output}: {decoder.samples_out} samples ({decoder.duration:.3f} s) "
                f"at {SAMPLE_RATE} Hz from {decoder.bytes_in} bytes of {decoder.format}, "
                f"{decoder.segments} segment(s)"
            )
    return status


def main(argv: list[str] | None = None) -> int:
    """`python -m kvs_ingest.media.cli`: the same command without the other subcommands."""
    parser = argparse.ArgumentParser(prog="kvs-ingest decode", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
