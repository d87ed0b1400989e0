"""Rewrite the nodes of an ONNX file without parsing or re-serialising its weights.

``onnx.load`` + ``onnx.save`` of a model with embedded weights costs time proportional to the
weights (about 0.5 s for the 90 MB MiniLM here), although tagging touches only the nodes. This
module walks the protobuf wire format of ``ModelProto`` down to ``GraphProto.node`` (field 1 of
field 7), parses just those small messages, and writes the file back with every other byte
range — initializers included — copied as it was. The result is a valid serialisation of the
same ``ModelProto`` with the new nodes (protobuf allows fields in any order; we keep the order).

The nodes of a file are one run of consecutive fields (every serializer writes field 1 first):
the run is found with a tight loop over node lengths, parsed in one ``FromString`` and written
back in one ``SerializeToString`` of the node-only graph, with nodes added by the caller at its
end. Nodes interleaved with other fields are handled field by field.
"""
from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path

import onnx

_MODEL_GRAPH_FIELD = 7
_MODEL_OPSET_FIELD = 8
_GRAPH_NODE_FIELD = 1
_GRAPH_INITIALIZER_FIELD = 5
_GRAPH_OUTPUT_FIELD = 12
_TENSOR_RAW_DATA_FIELD = 9
_LEN = 2


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, field start, payload start, payload end) of each field."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            payload_start = pos
        elif wire == 1:
            payload_start, pos = pos, pos + 8
        elif wire == 2:
            length, payload_start = _varint(buf, pos)
            pos = payload_start + length
        elif wire == 5:
            payload_start, pos = pos, pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf field")
        yield number, wire, field_start, payload_start, pos


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint((number << 3) | _LEN) + _encode_varint(len(payload)) + payload


_NODE_KEY = (_GRAPH_NODE_FIELD << 3) | _LEN  # 0x0a


def _node_run(buf, pos: int, end: int) -> tuple[int, int]:
    """From a node field at ``pos``: the end of the run of consecutive node fields, and how many."""
    count = 0
    while pos < end and buf[pos] == _NODE_KEY:
        b = buf[pos + 1] if pos + 1 < end else 0x80
        if b < 0x80:  # lengths below 128 and 16384 in one or two bytes, else the general decoder
            pos += 2 + b
        elif pos + 2 < end and buf[pos + 2] < 0x80:
            pos += 3 + ((b & 0x7F) | (buf[pos + 2] << 7))
        else:
            length, payload = _varint(buf, pos + 1)
            pos = payload + length
        count += 1
    if pos > end:
        raise ValueError("truncated protobuf field")
    return pos, count


def _graph_fields(buf, start: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """The graph's fields as ``_fields`` gives them, except that each run of consecutive node
    fields is one entry ``(1, 2, run start, -count, run end)``."""
    fields = []
    pos = start
    while pos < end:
        if buf[pos] == _NODE_KEY:
            run_end, count = _node_run(buf, pos, end)
            fields.append((_GRAPH_NODE_FIELD, _LEN, pos, -count, run_end))
            pos = run_end
            continue
        field = next(_fields(buf, pos, end))
        fields.append(field)
        pos = field[4]
    return fields


class NodeSplice:
    """The nodes of one ONNX file, editable, and a way to write them back cheaply."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # mmap: only the pages holding field headers and nodes are read; weights stay on disk
        # (or in the page cache) and are later copied kernel-side.
        with open(self.path, "rb") as f:
            self._size = os.fstat(f.fileno()).st_size
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self._size else None
        if self._mmap is None:
            raise ValueError(f"{path}: empty file")
        try:
            with memoryview(self._mmap) as buf:
                top = list(_fields(buf, 0, self._size))
                graphs = [f for f in top if f[0] == _MODEL_GRAPH_FIELD and f[1] == _LEN]
                self.opset_imports = [onnx.OperatorSetIdProto.FromString(bytes(buf[f[3]:f[4]]))
                                      for f in top if f[0] == _MODEL_OPSET_FIELD and f[1] == _LEN]
                if len(graphs) != 1:
                    raise ValueError(f"{path}: expected one graph, found {len(graphs)}")
                _, _, self._graph_field_start, self._graph_start, self._graph_end = graphs[0]
                self._graph_fields = _graph_fields(self._mmap, self._graph_start, self._graph_end)
                node_bytes = b"".join(
                    buf[f[2]:f[4]] for f in self._graph_fields if f[0] == _GRAPH_NODE_FIELD and f[1] == _LEN)
        except BaseException:
            self.close()
            raise
        # A GraphProto holding only the nodes: what the tagging pass reads and edits. Nodes
        # appended to it are written after the existing ones.
        self.graph = onnx.GraphProto.FromString(node_bytes)
        # Graph outputs to append (e.g. an alias output another loader expects).
        self.added_outputs: list[onnx.ValueInfoProto] = []
        self._initializers: dict[str, tuple] | None = None  # name -> (header, payload start, end)

    def initializer_headers(self) -> dict[str, onnx.TensorProto]:
        """Each initializer of the main graph by name: its dims, type and data location, parsed
        without its raw data (read on demand by ``initializer_array``)."""
        return {name: entry[0] for name, entry in self._initializer_index().items()}

    def _initializer_index(self) -> dict[str, tuple]:
        """name -> (header, payload start, payload end), parsed once."""
        if self._mmap is None:
            raise ValueError("the file is closed")
        if self._initializers is None:
            found = {}
            with memoryview(self._mmap) as buf:
                for f in self._graph_fields:
                    if f[0] != _GRAPH_INITIALIZER_FIELD or f[1] != _LEN:
                        continue
                    header = b"".join(bytes(buf[start:end]) for number, _, start, _, end in _fields(buf, f[3], f[4])
                                      if number != _TENSOR_RAW_DATA_FIELD)
                    tensor = onnx.TensorProto.FromString(header)
                    found[tensor.name] = (tensor, f[3], f[4])
            self._initializers = found
        return self._initializers

    def initializer_array(self, name: str):
        """An initializer's values (numpy), or None: not an initializer, or its data is external."""
        import numpy as np
        from onnx import numpy_helper

        entry = self._initializer_index().get(name)
        if entry is None or entry[0].data_location == onnx.TensorProto.EXTERNAL:
            return None
        with memoryview(self._mmap) as buf:
            return np.asarray(numpy_helper.to_array(onnx.TensorProto.FromString(bytes(buf[entry[1]:entry[2]]))))

    def graph_outputs(self) -> list[onnx.ValueInfoProto]:
        """The graph's outputs as written in the file (small messages, parsed on demand)."""
        if self._mmap is None:
            raise ValueError("the file is closed")
        with memoryview(self._mmap) as buf:
            return [onnx.ValueInfoProto.FromString(bytes(buf[f[3]:f[4]])) for f in self._graph_fields
                    if f[0] == _GRAPH_OUTPUT_FIELD and f[1] == _LEN]

    def write(self, path: Path | None = None, in_place: bool = False) -> None:
        """Write the file with the (edited) nodes in place of the original ones.

        ``in_place``: rewrite the file itself (the weights after the nodes are moved up by the
        bytes the nodes grew) instead of writing a copy and renaming it over the original. Only
        for a file nobody else has (an exporter's file in a staging folder): an interruption
        leaves it half-moved. It saves a second copy of the weights - for MiniLM's 90 MB, 0.08 s
        of copying into freshly allocated page cache against 0.02 s of moving bytes within it.
        Files that are links, or whose new layout would overwrite bytes not yet moved, are
        copied as before.
        """
        target = Path(path) if path is not None else self.path
        runs = [f for f in self._graph_fields if f[0] == _GRAPH_NODE_FIELD and f[1] == _LEN]
        # Each piece is new bytes, or an (offset, length) range of the original file.
        pieces: list[bytes | tuple[int, int]] = []
        if len(runs) <= 1 and [f.name for f, _ in self.graph.ListFields()] in ([], ["node"]):
            # The usual file: all nodes in one run, which the node-only graph serialises to exactly
            # (added nodes follow the others, as they do in the graph).
            nodes_run = self.graph.SerializeToString()
            for field in self._graph_fields:
                if field[0] == _GRAPH_NODE_FIELD and field[1] == _LEN:
                    pieces.append(nodes_run)
                    nodes_run = b""
                else:
                    self._copy(pieces, field)
            if nodes_run:  # a file without nodes, now with some
                pieces.append(nodes_run)
        else:
            nodes = iter(self.graph.node)
            for field in self._graph_fields:
                if field[0] == _GRAPH_NODE_FIELD and field[1] == _LEN:
                    pieces.extend(_length_delimited(_GRAPH_NODE_FIELD, next(nodes).SerializeToString())
                                  for _ in range(-field[3]))
                else:
                    self._copy(pieces, field)
            pieces.extend(_length_delimited(_GRAPH_NODE_FIELD, n.SerializeToString()) for n in nodes)
        pieces.extend(_length_delimited(_GRAPH_OUTPUT_FIELD, v.SerializeToString()) for v in self.added_outputs)
        graph_len = sum(len(p) if isinstance(p, bytes) else p[1] for p in pieces)
        graph_key = _encode_varint((_MODEL_GRAPH_FIELD << 3) | _LEN) + _encode_varint(graph_len)
        pieces = [(0, self._graph_field_start), graph_key, *pieces, (self._graph_end, self._size - self._graph_end)]
        if in_place and target == self.path and _movable_in_place(pieces) and _unshared_file(self.path):
            try:
                self.close()  # the mapping would see the bytes being moved
                _rewrite_in_place(self.path, pieces)
            finally:
                self.close()
            return
        tmp = target.with_name(f".{target.name}.tagging")
        try:
            with open(self.path, "rb") as src, open(tmp, "wb") as dst:
                for piece in pieces:
                    if isinstance(piece, bytes):
                        dst.write(piece)
                    else:
                        dst.flush()
                        _copy_range(src.fileno(), dst.fileno(), *piece)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            self.close()

    @staticmethod
    def _copy(pieces: list, field: tuple[int, int, int, int, int]) -> None:
        field_start, field_end = field[2], field[4]
        if pieces and isinstance(pieces[-1], tuple) and sum(pieces[-1]) == field_start:
            pieces[-1] = (pieces[-1][0], field_end - pieces[-1][0])  # extend a contiguous range
        else:
            pieces.append((field_start, field_end - field_start))

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None


def _layout(pieces: list) -> list[tuple[int, bytes | tuple[int, int]]]:
    """(offset in the new file, piece) of each piece."""
    placed, at = [], 0
    for piece in pieces:
        placed.append((at, piece))
        at += len(piece) if isinstance(piece, bytes) else piece[1]
    return placed


def _movable_in_place(pieces: list) -> bool:
    """Whether writing the pieces from last to first into the original file is safe: it is when no
    byte range moves down. Then each piece lands at or after the end of every range the pieces
    before it still have to read (those ranges end at or below where they land, which is below
    this piece), and a range moving up over itself is copied from its end."""
    return all(at >= piece[0] for at, piece in _layout(pieces) if isinstance(piece, tuple))


def _unshared_file(path: Path) -> bool:
    """A regular file with one name: rewriting it changes no other file."""
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _rewrite_in_place(path: Path, pieces: list, chunk: int = 1 << 23) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        placed = _layout(pieces)
        for at, piece in reversed(placed):
            if isinstance(piece, bytes):
                _pwrite_all(fd, piece, at)
                continue
            offset, length = piece
            shift = at - offset
            if shift == 0:
                continue  # already where it belongs
            end = offset + length
            while end > offset:  # from the end: the range moves up over itself
                start = max(offset, end - chunk)
                data = os.pread(fd, end - start, start)
                if len(data) != end - start:
                    raise OSError("short read while rewriting the ONNX file")
                _pwrite_all(fd, data, start + shift)
                end = start
        at, piece = placed[-1]
        os.ftruncate(fd, at + (len(piece) if isinstance(piece, bytes) else piece[1]))
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError("short write while rewriting the ONNX file")
        view, offset = view[n:], offset + n


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Copy bytes between files in the kernel (copy_file_range), else through a buffer."""
    os.lseek(dst, 0, os.SEEK_END)
    while length > 0:
        try:
            n = os.copy_file_range(src, dst, length, offset)
        except (AttributeError, OSError):
            os.lseek(src, offset, os.SEEK_SET)
            chunk = os.read(src, min(length, 1 << 24))
            n = os.write(dst, chunk)
        if n <= 0:
            raise OSError("short copy while rewriting the ONNX file")
        offset += n
        length -= n


def graph_output_names(path: Path) -> list[str]:
    """Names of a file's graph outputs, read without parsing its weights."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as buf:
        graph = next((fl for fl in _fields(buf, 0, len(buf)) if fl[0] == _MODEL_GRAPH_FIELD and fl[1] == _LEN), None)
        if graph is None:
            raise ValueError(f"{path}: no graph")
        return [onnx.ValueInfoProto.FromString(bytes(buf[fl[3]:fl[4]])).name
                for fl in _fields(buf, graph[3], graph[4]) if fl[0] == _GRAPH_OUTPUT_FIELD and fl[1] == _LEN]
