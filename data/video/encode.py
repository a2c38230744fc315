"""Writing clips to real video files with PyAV (synthetic data, test fixtures, the decode benchmark)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Container -> (video codec, pixel format, audio codec). The codecs every FFmpeg build of PyAV wheels has.
CODECS = {
    ".mp4": ("libx264", "yuv420p", "aac"),
    ".mkv": ("libx264", "yuv420p", "aac"),
    ".avi": ("mpeg4", "yuv420p", "pcm_s16le"),  # mp3 in AVI shifts the video timestamps at the start
    ".webm": ("libvpx", "yuv420p", "libopus"),
}


def write_video(
    path: str | Path,
    frames: np.ndarray,
    *,
    fps: int = 30,
    audio: bool = False,
    audio_rate: int = 22050,
    crf: int = 18,
    gop: int | None = None,
) -> Path:
    """Encode ``frames`` ``(T, H, W, 3)`` uint8 (H and W even) into ``path``; the suffix picks the codecs.

    ``audio=True`` adds a mono sine track of the same duration, so readers meet the interleaved audio
    packets of real files. ``gop`` is the keyframe interval (FFmpeg's default when None).
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8; got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frame size {w}x{h} must be even for yuv420p")
    if path.suffix not in CODECS:
        raise ValueError(f"no codecs known for {path.suffix!r}; use one of {sorted(CODECS)}")
    vcodec, pix_fmt, acodec = CODECS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(vcodec, rate=Fraction(fps))
        video.width, video.height, video.pix_fmt = w, h, pix_fmt
        if vcodec == "libx264":
            video.options = {"crf": str(crf)}
        elif vcodec == "mpeg4":
            video.options = {"qscale": "2"}
            video.codec_context.qscale = 2
        if gop is not None:
            video.codec_context.gop_size = gop
        sound = None
        if audio:
            rate = 48000 if acodec == "libopus" else audio_rate  # opus only takes 48 kHz
            sound = container.add_stream(acodec, rate=rate, layout="mono")
        # Interleave audio with video in time order: AVI's muxer does not reorder and drops timestamps
        # of video packets written after a burst of audio.
        tone = _tone_frames(sound, seconds=t / fps) if sound is not None else iter(())
        pending = next(tone, None)
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
            while pending is not None and pending.pts / pending.sample_rate < (i + 1) / fps:
                container.mux(sound.encode(pending))
                pending = next(tone, None)
        container.mux(video.encode())
        if sound is not None:
            container.mux(sound.encode())
    return path


def _tone_frames(stream: av.audio.stream.AudioStream, *, seconds: float):
    """A 440 Hz sine as audio frames of the encoder's frame size."""
    rate = stream.codec_context.sample_rate
    chunk = stream.codec_context.frame_size or 1024
    total = int(round(seconds * rate))
    fmt = stream.codec_context.format.name
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        tone = 0.2 * np.sin(2 * np.pi * 440 * (start + np.arange(n)) / rate)
        tone = tone.astype(np.float32) if fmt.startswith("flt") else (tone * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone[None], format=fmt, layout="mono")  # mono: (1, n) planar or packed
        frame.sample_rate = rate
        frame.pts = start
        yield frame
