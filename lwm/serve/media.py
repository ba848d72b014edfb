"""Chat messages with images and videos → LWM's prompt tokens.

Content parts are OpenAI's: `{"type": "text", "text"}`, `{"type": "image_url", "image_url":
{"url"}}` and `{"type": "video_url", "video_url": {"url"}}`; a URL is a `data:` URL (base64) or
a path (optionally `file://`) that must resolve inside the server's media root. A video gives
`video_frames` frames sampled uniformly, an image one frame, each resized (short side) and
centre-cropped to the VQ tokenizer's resolution and VQ-encoded, exactly as `lwm chat` does. A
user message's text parts are joined by newlines and its frames follow the text (LWM's layout,
`{question}\\n<vision>…</vision>`); the conversation is rendered by the training data's own
`encode_conversation`.
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.data import DataConfig
from lwm.data.chat import encode_conversation
from lwm.data.video import VideoReadError, read_video, resize_and_center_crop
from lwm.serve.protocol import APIError, bad_request

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL)
_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
           "video/mp4": ".mp4", "video/webm": ".webm", "image/bmp": ".bmp", "video/quicktime": ".mov",
           "image/x-portable-pixmap": ".ppm", "video/x-matroska": ".mkv"}
ROLES = ("system", "developer", "user", "assistant")


class MediaReader:
    """Reads media parts into VQ codes with the server's VQ tokenizer and limits."""

    def __init__(self, vq: Any | None, media_root: str, video_frames: int, max_frames: int):
        self.vq = vq
        self.media_root = Path(media_root).resolve() if media_root else None
        self.video_frames = video_frames
        self.max_frames = max_frames

    def _local(self, url: str, param: str) -> Path:
        if self.media_root is None:
            raise bad_request("media paths are disabled on this server (start it with --serve.media_root DIR); "
                              "send the file as a data: URL", param)
        path = Path(url[len("file://"):] if url.startswith("file://") else url)
        resolved = (self.media_root / path).resolve() if not path.is_absolute() else path.resolve()
        if not resolved.is_relative_to(self.media_root):
            raise APIError(403, f"{url} is outside the media root", type="permission_error", param=param,
                           code="media_outside_root")
        if not resolved.is_file():
            raise bad_request(f"{url} does not exist under the media root", param)
        return resolved

    def frames(self, url: Any, kind: str, param: str, folder: Path) -> np.ndarray:
        """uint8 frames `[F, H, W, 3]` of one image or video part."""
        if not isinstance(url, str) or not url:
            raise bad_request(f"'{param}' must be a non-empty string", param)
        if url.startswith("data:"):
            match = _DATA_URL.match(url)
            if match is None or not match.group("b64"):
                raise bad_request("a data: URL must be base64 (data:MIME;base64,...)", param)
            try:
                payload = base64.b64decode(match.group("data"), validate=True)
            except (binascii.Error, ValueError):
                raise bad_request("the data: URL is not valid base64", param) from None
            suffix = _SUFFIX.get(match.group("mime") or "", ".mp4" if kind == "video" else ".png")
            path = folder / f"part{len(list(folder.iterdir()))}{suffix}"
            path.write_bytes(payload)
        else:
            path = self._local(url, param)
        size = self.vq.resolution
        try:
            if kind == "image":
                from PIL import Image, UnidentifiedImageError

                try:
                    with Image.open(path) as image:
                        frame = np.asarray(image.convert("RGB"))
                except (UnidentifiedImageError, OSError) as error:
                    raise bad_request(f"the image cannot be read ({error})", param) from None
                return resize_and_center_crop(frame[None], size)
            return read_video(path, num_frames=self.video_frames, size=size)
        except VideoReadError as error:
            raise bad_request(f"the video cannot be read ({error})", param) from None

    def message_codes(self, parts: list, index: int, budget: list[int], folder: Path) -> tuple[str, np.ndarray | None]:
        """Text and flat VQ codes of one message's content parts; `budget` counts frames left."""
        texts, codes = [], []
        for number, part in enumerate(parts):
            param = f"messages[{index}].content[{number}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request("a content part must be an object with a 'type'", param)
            kind = part["type"]
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request("a text part needs a string 'text'", param)
                texts.append(part["text"])
                continue
            if kind not in ("image_url", "video_url"):
                raise bad_request(f"content part type {kind!r} is not supported (text, image_url, video_url)", param)
            if self.vq is None:
                raise bad_request("this server has no VQ tokenizer (start it with --load.vq PATH): it cannot read "
                                  "images or videos", param)
            field = part.get(kind)
            url = field.get("url") if isinstance(field, dict) else field
            frames = self.frames(url, "image" if kind == "image_url" else "video", f"{param}.{kind}.url", folder)
            budget[0] -= len(frames)
            if budget[0] < 0:
                raise APIError(413, f"the request holds more than {self.max_frames} frames (serve.max_frames)",
                               param=param, code="too_many_frames")
            codes.append(np.asarray(self.vq.encode(frames)).reshape(len(frames), -1))
        flat = np.concatenate(codes).reshape(-1).astype(np.int32) if codes else None
        return "\n".join(texts), flat


def render_chat(messages: Any, tokenizer: Any, model_config: Any, template: Any,
                media: MediaReader) -> tuple[list[int], list[bool]]:
    """Prompt ids and vision flags of a chat request, ending with the assistant marker."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    rendered = []
    budget = [media.max_frames]
    with tempfile.TemporaryDirectory(prefix="lwm-serve-") as folder:
        for index, message in enumerate(messages):
            param = f"messages[{index}]"
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise bad_request(f"each message needs a 'role' among {', '.join(ROLES)}", f"{param}.role")
            role = "system" if message["role"] == "developer" else message["role"]
            content = message.get("content")
            if isinstance(content, str):
                text, codes = content, None
            elif isinstance(content, list):
                text, codes = media.message_codes(content, index, budget, Path(folder))
            else:
                raise bad_request("'content' must be a string or a list of content parts", f"{param}.content")
            if codes is not None and role != "user":
                raise bad_request("images and videos go in user messages", f"{param}.content")
            if role == "system" and index != 0:
                raise bad_request("a system message must come first", param)
            rendered.append({"role": role, "content": text, "vision": None if codes is None else codes.tolist()})
    turns = [message["role"] for message in rendered if message["role"] != "system"]
    if not turns or turns[-1] != "user" or any(a == b for a, b in zip(turns, turns[1:])):
        raise bad_request("messages must alternate user and assistant turns and end with a user turn", "messages")
    if any(message["vision"] is not None for message in rendered) and not model_config.has_vision:
        raise bad_request("this model has no vision vocabulary: it cannot read images or videos", "messages")
    config = DataConfig(chat=template, vision=model_config.vision)
    try:
        example = encode_conversation(rendered, tokenizer, config, model_config.vocab_size, generation_prompt=True)
    except ValueError as error:
        raise bad_request(f"the conversation cannot be rendered: {error}", "messages") from None
    return [int(token) for token in example.tokens], [bool(flag) for flag in example.is_vision]
