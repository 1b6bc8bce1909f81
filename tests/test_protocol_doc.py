"""docs/protocol.md says the same bytes as csrc/shmq_layout.h, and a real queue has them."""
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import shmq

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
LAYOUT = ROOT / "csrc" / "shmq_layout.h"
STRUCTS = ["shmq_identity", "shmq_control", "shmq_slot", "shmq_consumers_header",
           "shmq_wake_page", "shmq_consumer_entry"]
CONSTANTS = ["SHMQ_MAGIC", "SHMQ_CONSUMERS_MAGIC", "SHMQ_LAYOUT_VERSION", "SHMQ_LINE",
             "SHMQ_SLOT_HEADER", "SHMQ_STREAM_ENDED", "SHMQ_FLAG_LOSSLESS", "SHMQ_ENTRY_REGISTERED",
             "SHMQ_CONSUMER_ENTRIES_MAX"]
# Tuning constants of the C files (#define NAME value) that the doc states.
SOURCE_CONSTANTS = {"MAX_RESYNCS": "consumer.c", "WAIT_SLICE_NS": "backpressure.c",
                    "SPIN_LOOKS": "backpressure.c"}


def table_rows(section_text):
    """The cells of each data row of the first markdown table in the text."""
    rows = []
    section_text = re.sub(r"^```.*?^```", "", section_text, flags=re.S | re.M)  # diagrams
    for line in section_text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if set("".join(cells)) <= set("-: "):
            continue
        rows.append(cells)
    return rows[1:]  # drop the column titles


def doc_sections():
    """Heading text -> the text up to the next heading."""
    text = DOC.read_text()
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    return {parts[i].lstrip("# ").strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def doc_struct_tables():
    """struct name -> {field: (offset, size or None)} from the `### struct X` tables."""
    tables = {}
    for heading, body in doc_sections().items():
        m = re.fullmatch(r"struct (\w+)", heading)
        if m:
            tables[m.group(1)] = {
                row[0]: (int(row[1], 0), int(row[2], 0) if row[2].isdigit() else None)
                for row in table_rows(body)}
    return tables


def doc_constants():
    return {row[0]: int(row[1], 0) for row in table_rows(doc_sections()["4. Constants"])}


def header_fields():
    """struct name -> [(field, flexible)] parsed from the C declarations."""
    text = LAYOUT.read_text()
    fields = {}
    for name in STRUCTS:
        body = re.search(r"struct %s \{(.*?)\n\};" % name, text, re.S).group(1)
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        fields[name] = [(m.group(1), m.group(2) == "[]")
                        for m in re.finditer(r"(\w+)\s*(\[[^\]]*\])?\s*;", body)]
    return fields


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    """(struct, field) -> (offset, size or None), constant -> value, from the compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to read offsets from shmq_layout.h")
    lines = ['#include <stdio.h>', '#include "shmq_layout.h"', "int main(void) {"]
    for name, fields in header_fields().items():
        for field, flexible in fields:
            size = "0ull" if flexible else f"(unsigned long long)sizeof(((struct {name} *)0)->{field})"
            lines.append(f'printf("F {name} {field} %llu %llu {int(flexible)}\\n", '
                         f"(unsigned long long)offsetof(struct {name}, {field}), {size});")
    for const in CONSTANTS:
        lines.append(f'printf("C {const} %llu\\n", (unsigned long long)({const}));')
    lines.append("return 0; }")
    work = tmp_path_factory.mktemp("layout")
    (work / "layout.c").write_text("\n".join(lines) + "\n")
    subprocess.run([cc, "-std=gnu11", f"-I{ROOT / 'csrc'}", "-o", str(work / "layout"),
                    str(work / "layout.c")], check=True, capture_output=True, text=True)
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True,
                         text=True).stdout
    fields, constants = {}, {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "F":
            fields[(parts[1], parts[2])] = (int(parts[3]), None if parts[5] == "1" else int(parts[4]))
        else:
            constants[parts[1]] = int(parts[2])
    return fields, constants


def is_padding(field):
    return re.fullmatch(r"pad\d*", field) is not None


def test_doc_states_the_layout_version_of_the_header(c_layout):
    _, constants = c_layout
    version = constants["SHMQ_LAYOUT_VERSION"]
    first_heading = DOC.read_text().splitlines()[0]
    assert f"layout version {version}" in first_heading
    assert doc_constants()["SHMQ_LAYOUT_VERSION"] == version


def test_every_documented_offset_and_size_matches_the_compiler(c_layout):
    fields, _ = c_layout
    tables = doc_struct_tables()
    assert set(STRUCTS) <= set(tables), "a struct of shmq_layout.h has no table"
    for name in STRUCTS:
        for field, (offset, size) in tables[name].items():
            assert (name, field) in fields, f"doc lists {name}.{field}, the header has no such field"
            c_offset, c_size = fields[(name, field)]
            assert offset == c_offset, f"{name}.{field}: doc offset {offset}, C {c_offset}"
            if c_size is None:
                assert size is None, f"{name}.{field} is a flexible array: its size is variable"
            else:
                assert size == c_size, f"{name}.{field}: doc size {size}, C {c_size}"


def test_every_field_that_is_not_padding_is_documented(c_layout):
    fields, _ = c_layout
    tables = doc_struct_tables()
    missing = [f"{name}.{field}" for (name, field) in fields
               if not is_padding(field) and field not in tables.get(name, {})]
    assert not missing, f"undocumented fields: {missing}"


def test_every_documented_constant_matches_the_header(c_layout):
    _, constants = c_layout
    documented = doc_constants()
    for const in CONSTANTS:
        assert documented.get(const) == constants[const], const


def test_every_documented_tuning_constant_matches_its_source():
    documented = doc_constants()
    for const, source in SOURCE_CONSTANTS.items():
        m = re.search(r"^#define %s (.+)$" % const, (ROOT / "csrc" / source).read_text(), re.M)
        assert m, f"{const} is no longer defined in csrc/{source}"
        value = eval(re.sub(r"(\d+)LL", r"\1", m.group(1)), {})  # e.g. (10LL * 1000 * 1000)
        assert documented.get(const) == value, const


def _u(data, table, field, base=0):
    offset, size = table[field]
    return struct.unpack_from({4: "=I", 8: "=Q"}[size], data, base + offset)[0]


def test_a_lossless_ring_has_the_documented_flag_entry_state_and_wake_line(name):
    tables = doc_struct_tables()
    consts = doc_constants()
    ident, control = tables["shmq_identity"], tables["shmq_control"]
    entry, wake = tables["shmq_consumer_entry"], tables["shmq_wake_page"]
    page = os.sysconf("SC_PAGESIZE")
    ring_path = Path(f"/dev/shm/shmq-{name}")
    cons_path = Path(f"/dev/shm/shmq-{name}.consumers")
    with shmq.Producer(name, slot_size=16, capacity=4, lossless=True, max_consumers=2) as producer:
        ring = ring_path.read_bytes()
        assert _u(ring, ident, "flags") == consts["SHMQ_FLAG_LOSSLESS"]
        with shmq.Consumer(name) as consumer:
            assert consumer.registered
            for i in range(3):
                producer.publish(b"m%d" % i)
            assert consumer.poll() == b"m0"
            cons = cons_path.read_bytes()
            state = _u(cons, entry, "state", 2 * page)
            assert state & consts["SHMQ_ENTRY_REGISTERED"]
            assert state >> 1 >= 1, "a registered entry carries a claim counter"
            assert _u(cons, entry, "position", 2 * page) == 1
            assert _u(Path(ring_path).read_bytes(), control, "head") == 3
            # Nobody waits: the producer's wake line is at rest.
            assert _u(cons, wake, "producer_waiting", page) == 0
            # Position 1: sequences up to 4 fit; 5 would rewrite unread 1.
            producer.publish(b"m3")
            producer.publish(b"m4")
            with pytest.raises(shmq.Full):
                producer.publish(b"m5", timeout=0)
            with pytest.raises(shmq.Full):
                producer.publish(b"m5", timeout=0.05)
            cons = cons_path.read_bytes()
            # It slept: it raised the flag, asked for a quarter ring (one slot).
            assert _u(cons, wake, "producer_wake_at", page) == 5 - 4 + 1
        cons = cons_path.read_bytes()
        closed = _u(cons, entry, "state", 2 * page)
        assert not closed & consts["SHMQ_ENTRY_REGISTERED"], "close unregisters"
        assert closed >> 1 == state >> 1, "the claim counter survives close"
        with shmq.Consumer(name):
            again = _u(cons_path.read_bytes(), entry, "state", 2 * page)
            assert again >> 1 != state >> 1, "a new claim, a new counter"
            assert again & consts["SHMQ_ENTRY_REGISTERED"]
        producer.publish(b"m5", timeout=0)  # nobody registered: room again


def test_a_real_ring_has_the_documented_bytes(name):
    tables = doc_struct_tables()
    consts = doc_constants()
    ident, control, slot = tables["shmq_identity"], tables["shmq_control"], tables["shmq_slot"]

    def u(data, table, field, base=0):
        offset, size = table[field]
        return struct.unpack_from({4: "=I", 8: "=Q"}[size], data, base + offset)[0]

    message = b"hello, protocol!" * 2 + b"tail"  # 36 bytes: a partial last word
    producer = shmq.Producer(name, slot_size=40, capacity=8)
    try:
        assert producer.publish(message) == 0
        ring = Path(f"/dev/shm/shmq-{name}").read_bytes()
        page = os.sysconf("SC_PAGESIZE")
        assert u(ring, ident, "magic") == consts["SHMQ_MAGIC"]
        assert ring[:8] == b"shmqring"  # the magic's bytes, on a little-endian host
        assert u(ring, ident, "version") == consts["SHMQ_LAYOUT_VERSION"]
        assert u(ring, ident, "flags") == 0
        assert u(ring, ident, "slot_size") == 40
        stride = consts["SHMQ_SLOT_HEADER"] + 48
        assert u(ring, ident, "slot_stride") == stride
        assert u(ring, ident, "capacity") == 8
        assert u(ring, ident, "page_size") == page
        assert u(ring, ident, "first_sequence") == 0
        assert u(ring, ident, "slots_offset") == page
        assert u(ring, ident, "total_size") == len(ring) == page + 8 * stride
        instance = u(ring, ident, "instance")
        assert instance & 1
        assert u(ring, control, "head") == 1
        assert u(ring, control, "stream_state") == 0
        slot0 = page
        assert u(ring, slot, "stamp", slot0) == 0
        assert u(ring, slot, "length", slot0) == len(message)
        payload = slot["payload"][0]
        assert ring[slot0 + payload:slot0 + payload + len(message)] == message
        # Unwritten slots hold "one lap before": sequence 1 - capacity.
        assert u(ring, slot, "stamp", slot0 + stride) == (1 - 8) % 2**64

        cons = Path(f"/dev/shm/shmq-{name}.consumers").read_bytes()
        header = tables["shmq_consumers_header"]
        assert u(cons, header, "magic") == consts["SHMQ_CONSUMERS_MAGIC"]
        assert u(cons, header, "version") == consts["SHMQ_LAYOUT_VERSION"]
        entries = u(cons, header, "entry_count")
        assert entries == u(ring, ident, "consumer_entries")
        assert u(cons, header, "page_size") == page
        assert u(cons, header, "ring_instance") == instance
        assert u(cons, header, "total_size") == len(cons) == (2 + entries) * page
    finally:
        producer.close()
    ring = Path(f"/dev/shm/shmq-{name}").read_bytes()
    assert u(ring, control, "stream_state") & consts["SHMQ_STREAM_ENDED"]
