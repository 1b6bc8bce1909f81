"""docs/protocol.md says the same bytes as csrc/shmq_layout.h, and a live queue has them.

The ring is read through its file; the wake page and a consumer's entry,
which are System V pages, are mapped read-only through libc (shmat), their
ids found where the document says: the ring's wake_shm, and the one write
lock in the entry's id range of the (empty) lock file, asked with
F_OFD_GETLK."""
import contextlib
import ctypes
import fcntl
import os
import socket
import platform
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
STRUCTS = ["shmq_identity", "shmq_control", "shmq_record", "shmq_wake_page", "shmq_consumer_entry",
           "shmq_group_page", "shmq_group_member"]
# Constants the compiler reads from shmq_layout.h and shmq.h.
CONSTANTS = ["SHMQ_MAGIC", "SHMQ_WAKE_MAGIC", "SHMQ_LAYOUT_VERSION", "SHMQ_LINE",
             "SHMQ_RECORD_BYTES", "SHMQ_SLOT_ALIGN", "SHMQ_STREAM_ENDED", "SHMQ_WAKE_FUTEX",
             "SHMQ_WAKE_DESCRIPTOR", "SHMQ_FLAG_LOSSLESS",
             "SHMQ_KNOWN_FLAGS", "SHMQ_FLAG_SPANNING", "SHMQ_ENTRY_REGISTERED", "SHMQ_CONSUMER_ENTRIES_MAX",
             "SHMQ_ENTRY_ID_BASE", "SHMQ_ENTRY_ID_SPAN", "SHMQ_NAME_MAX", "SHMQ_SLOT_SIZE_MAX",
             "SHMQ_MESSAGE_SIZE_MAX",
             "SHMQ_CAPACITY_MAX", "SHMQ_SEGMENT_MAX", "SHMQ_DEFAULT_SLOT_SIZE",
             "SHMQ_DEFAULT_CAPACITY", "SHMQ_DEFAULT_MAX_CONSUMERS", "SHMQ_ENTRY_GROUP_MEMBER",
             "SHMQ_GROUPS_MAX", "SHMQ_GROUP_MEMBERS_MAX", "SHMQ_GROUP_NAME_MAX", "SHMQ_GROUP_MAGIC",
             "SHMQ_GROUP_BASE", "SHMQ_GROUP_ID_BASE"]
# Tuning constants of the C files (#define NAME value) that the doc states.
SOURCE_CONSTANTS = {"MAX_RESYNCS": "consumer.c", "MAX_LAPS": "consumer.c",
                    "SLEEP_SLICE_NS": "consumer.c", "UNWOKEN_SLICE_NS": "consumer.c",
                    "WAIT_SLICE_NS": "backpressure.c", "SPIN_LOOKS": "backpressure.c"}


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
    """The `N. Constants` table: name -> value."""
    sections = [body for heading, body in doc_sections().items()
                if re.fullmatch(r"\d+\. Constants", heading)]
    assert len(sections) == 1, "docs/protocol.md has no (or more than one) Constants section"
    return {row[0]: int(row[1], 0) for row in table_rows(sections[0])}


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
    lines = ["#include <stdio.h>", '#include "shmq.h"', '#include "shmq_layout.h"',
             "int main(void) {"]
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
    # The reader's validation table names the version it accepts.
    assert f"`version != {version}`" in DOC.read_text()


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


def test_every_row_of_the_constants_table_is_checked():
    unchecked = set(doc_constants()) - set(CONSTANTS) - set(SOURCE_CONSTANTS)
    assert not unchecked, f"constants the tests do not check: {sorted(unchecked)}"


# ---------------------------------------------------------------- a live queue

SHM_RDONLY = 0o10000
IPC_STAT = 2
SHM_DEST = 0o1000  # in shm_perm.mode: marked for removal
FLOCK = "hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (64-bit Linux)

needs_sysv_view = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64") or not hasattr(fcntl, "F_OFD_GETLK"),
    reason="struct shmid_ds and struct flock are spelled out here for 64-bit x86 and Arm Linux")


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmdt.restype = ctypes.c_int
    libc.shmdt.argtypes = [ctypes.c_void_p]
    libc.shmctl.restype = ctypes.c_int
    libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return libc


def ipc_stat(shm_id):
    """What the kernel records of a System V segment (shmctl IPC_STAT)."""
    buf = ctypes.create_string_buffer(256)  # struct shmid_ds is 112 bytes
    if _libc().shmctl(shm_id, IPC_STAT, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    key, uid, _gid, cuid = struct.unpack_from("=iIII", buf.raw, 0)
    mode = struct.unpack_from("=H", buf.raw, 20)[0]  # little-endian: the low half either way
    segsz = struct.unpack_from("=Q", buf.raw, 48)[0]
    return {"key": key, "uid": uid, "cuid": cuid, "mode": mode, "segsz": segsz}


@contextlib.contextmanager
def sysv_page(shm_id, size):
    """Maps segment shm_id read-only; yields a function that copies its bytes now."""
    libc = _libc()
    addr = libc.shmat(shm_id, None, SHM_RDONLY)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    try:
        yield lambda: ctypes.string_at(addr, size)
    finally:
        libc.shmdt(addr)


def write_lock_in(fd, start, length):
    """F_OFD_GETLK asking as a reader over [start, start + length): the start
    of a write lock there, or None."""
    assert length > 0, "l_len 0 would mean: to the end of the file"
    query = struct.pack(FLOCK, fcntl.F_RDLCK, os.SEEK_SET, start, length, 0)
    l_type, _, l_start, _, _ = struct.unpack(FLOCK, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))
    return None if l_type == fcntl.F_UNLCK else l_start


def entry_page_id(fd, index, consts):
    """The shm id that the holder of entry `index` tells with its id lock,
    after checking that the range holds exactly that one lock."""
    span = consts["SHMQ_ENTRY_ID_SPAN"]
    base = consts["SHMQ_ENTRY_ID_BASE"] + index * span
    start = write_lock_in(fd, base, span)
    if start is None:
        return None
    shm_id = start - base
    if shm_id > 0:
        assert write_lock_in(fd, base, shm_id) is None, "a second lock below the id"
    if shm_id < span - 1:
        assert write_lock_in(fd, start + 1, span - shm_id - 1) is None, "a second lock above"
    return shm_id


def listed_in_proc_locks(path):
    """Whether /proc/locks lists a write lock on byte 0 of the file at path."""
    st = os.stat(path)
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->":
            continue
        major, minor, inode = fields[5].split(":")
        if (fields[3] == "WRITE" and int(major, 16) == os.major(st.st_dev)
                and int(minor, 16) == os.minor(st.st_dev) and int(inode) == st.st_ino
                and fields[6] == "0" and fields[7] == "0"):
            return True
    return False


def _u(data, table, field, base=0):
    offset, size = table[field]
    return struct.unpack_from({4: "=I", 8: "=Q"}[size], data, base + offset)[0]


def _wake_shm(ring, control):
    offset, size = control["wake_shm"]
    assert size == 4
    return struct.unpack_from("=i", ring, offset)[0]


@needs_sysv_view
def test_a_live_ring_its_wake_page_and_its_lock_files_have_the_documented_bytes(queue_name):
    name = queue_name
    tables = doc_struct_tables()
    consts = doc_constants()
    ident, control, record = tables["shmq_identity"], tables["shmq_control"], tables["shmq_record"]
    wake = tables["shmq_wake_page"]
    page = os.sysconf("SC_PAGESIZE")
    ring_path = f"/dev/shm/shmq-{name}"
    locks_path, producer_path = ring_path + ".consumers", ring_path + ".producer"

    message = b"hello, protocol!" * 2 + b"tail"  # 36 bytes: a partial last word
    large = bytes((i * 7) % 251 for i in range(100))  # three slots
    padded = bytes((i * 13) % 241 for i in range(200))  # five slots: past the end, so at slot 0
    producer = shmq.Producer(name, slot_size=40, capacity=8, mode=0o640, max_message_size=320)
    try:
        assert producer.publish(message) == 0
        ring = Path(ring_path).read_bytes()
        assert _u(ring, ident, "magic") == consts["SHMQ_MAGIC"]
        assert ring[:8] == b"shmqring"  # the magic's bytes, on a little-endian host
        assert _u(ring, ident, "version") == consts["SHMQ_LAYOUT_VERSION"]
        assert _u(ring, ident, "flags") == consts["SHMQ_FLAG_SPANNING"]  # 320 > 40
        assert _u(ring, ident, "slot_size") == 40
        stride = 48  # round_up(40, SHMQ_SLOT_ALIGN)
        assert consts["SHMQ_SLOT_ALIGN"] == 16
        assert _u(ring, ident, "slot_stride") == stride
        assert _u(ring, ident, "capacity") == 8
        assert _u(ring, ident, "page_size") == page
        assert _u(ring, ident, "first_sequence") == 0
        assert _u(ring, ident, "index_offset") == page
        data = _u(ring, ident, "data_offset")
        assert data == 2 * page  # 8 records of 16 bytes, to a whole page
        assert _u(ring, ident, "max_message") == 320
        assert _u(ring, ident, "total_size") == len(ring) == data + 8 * stride
        instance = _u(ring, ident, "instance")
        assert instance & 1
        assert _u(ring, ident, "consumer_entries") == consts["SHMQ_DEFAULT_MAX_CONSUMERS"]
        assert _u(ring, control, "head") == 1
        assert _u(ring, control, "tail") == 0
        assert _u(ring, control, "stream_state") == 0
        size = consts["SHMQ_RECORD_BYTES"]
        rec = [page + i * size for i in range(8)]
        assert _u(ring, record, "stamp", rec[0]) == 0
        assert _u(ring, record, "length", rec[0]) == len(message)
        assert _u(ring, record, "slot", rec[0]) == 0
        assert ring[data:data + len(message)] == message
        # Unwritten records are marked "being written" for their first lap.
        assert _u(ring, record, "stamp", rec[1]) == 1 - 1
        # A record of three slots goes where the last ended (slot 1), and one
        # of five no longer fits before the end (slots 4..7): it goes to slot
        # 0, and the records whose slots it takes are marked overwritten
        # (r + capacity - 1), the tail moving past them.
        assert producer.publish(large) == 1
        ring = Path(ring_path).read_bytes()
        assert (_u(ring, record, "stamp", rec[1]), _u(ring, record, "length", rec[1]),
                _u(ring, record, "slot", rec[1])) == (1, len(large), 1)
        assert ring[data + 1 * stride:data + 1 * stride + len(large)] == large
        assert producer.publish(padded) == 2
        ring = Path(ring_path).read_bytes()
        assert (_u(ring, record, "stamp", rec[2]), _u(ring, record, "length", rec[2]),
                _u(ring, record, "slot", rec[2])) == (2, len(padded), 0)
        assert ring[data:data + len(padded)] == padded
        assert _u(ring, record, "stamp", rec[0]) == 0 + 8 - 1
        assert _u(ring, record, "stamp", rec[1]) == 1 + 8 - 1
        assert _u(ring, control, "tail") == 2
        assert _u(ring, control, "head") == 3
        # Not spanning (no max_message_size): each slot behind its record,
        # slot_stride apart, and the payload right after the record.
        with shmq.Producer(name + "-fixed", slot_size=40, capacity=8, unlink_on_close=True) as fixed:
            fixed.publish(message)
            fixed.publish(message[::-1])
            fring = Path(ring_path + "-fixed").read_bytes()
            fstride = 16 + 48
            assert _u(fring, ident, "flags") == 0
            assert _u(fring, ident, "slot_stride") == fstride
            assert _u(fring, ident, "max_message") == 40
            assert _u(fring, ident, "data_offset") == page + 16
            assert _u(fring, ident, "total_size") == len(fring) == page + 8 * fstride
            assert _u(fring, record, "stamp", page + fstride) == 1
            assert _u(fring, record, "length", page + fstride) == len(message)
            start = page + fstride + 16
            assert fring[start:start + len(message)] == message[::-1]

        # Both lock files are empty; the producer's is 0600, the consumers'
        # grants write wherever the ring grants read (0640 -> 0660).
        assert os.stat(producer_path).st_size == 0
        assert os.stat(producer_path).st_mode & 0o777 == 0o600
        assert os.stat(locks_path).st_size == 0
        assert os.stat(locks_path).st_mode & 0o777 == 0o660
        # The producer holds byte 0 of NAME.producer, and /proc/locks says so.
        fd = os.open(producer_path, os.O_RDONLY)
        try:
            assert write_lock_in(fd, 0, 1) == 0
        finally:
            os.close(fd)
        assert listed_in_proc_locks(producer_path)

        # The wake page: the System V id at line 4 of the ring.
        wake_id = _wake_shm(ring, control)
        assert wake_id >= 0
        seen = ipc_stat(wake_id)
        assert seen["key"] == 0, "made with IPC_PRIVATE"
        assert seen["segsz"] == page
        assert seen["uid"] == seen["cuid"] == os.geteuid()
        assert seen["mode"] & 0o777 == 0o660
        assert seen["mode"] & SHM_DEST, "marked for removal once mapped"
        with sysv_page(wake_id, page) as read:
            data = read()
            assert _u(data, wake, "magic") == consts["SHMQ_WAKE_MAGIC"]
            assert data[wake["magic"][0]:wake["magic"][0] + 8] == b"shmqwake"
            assert _u(data, wake, "ring_instance") == instance
            # Nobody sleeps: both lines are at rest.
            for field in ("wake_flag", "producer_waiting", "producer_wake_at"):
                assert _u(data, wake, field) == 0, field
            # The rest of the page, past the tag, is zero.
            assert not any(data[wake["ring_instance"][0] + 8:])
    finally:
        producer.close()
    ring = Path(ring_path).read_bytes()
    assert _u(ring, control, "stream_state") & consts["SHMQ_STREAM_ENDED"]
    fd = os.open(producer_path, os.O_RDONLY)
    try:
        assert write_lock_in(fd, 0, 1) is None, "the producer lock goes with the producer"
    finally:
        os.close(fd)


@needs_sysv_view
def test_a_consumer_entry_is_found_from_the_lock_file_and_has_the_documented_bytes(queue_name):
    name = queue_name
    tables = doc_struct_tables()
    consts = doc_constants()
    ident, control = tables["shmq_identity"], tables["shmq_control"]
    entry, wake = tables["shmq_consumer_entry"], tables["shmq_wake_page"]
    page = os.sysconf("SC_PAGESIZE")
    ring_path = f"/dev/shm/shmq-{name}"
    registered = consts["SHMQ_ENTRY_REGISTERED"]
    with shmq.Producer(name, slot_size=16, capacity=4, lossless=True, max_consumers=2) as producer, \
            contextlib.ExitStack() as mappings:
        ring = Path(ring_path).read_bytes()
        assert _u(ring, ident, "flags") == consts["SHMQ_FLAG_LOSSLESS"]
        assert _u(ring, ident, "consumer_entries") == 2
        instance = _u(ring, ident, "instance")
        read_wake = mappings.enter_context(sysv_page(_wake_shm(ring, control), page))
        locks = os.open(ring_path + ".consumers", os.O_RDONLY)
        mappings.callback(os.close, locks)
        assert write_lock_in(locks, 0, 2) is None, "no entry is live yet"

        with shmq.Consumer(name) as consumer:
            assert consumer.registered
            # Entry 0 is live (its byte locked), entry 1 is not; the file stays empty.
            assert write_lock_in(locks, 0, 1) == 0
            assert write_lock_in(locks, 1, 1) is None
            assert entry_page_id(locks, 1, consts) is None
            assert os.fstat(locks).st_size == 0
            first_id = entry_page_id(locks, 0, consts)
            assert first_id is not None
            seen = ipc_stat(first_id)
            assert seen["key"] == 0, "made with IPC_PRIVATE"
            assert seen["segsz"] == page
            assert seen["uid"] == os.stat(ring_path).st_uid, "given to the ring's owner"
            assert seen["cuid"] == os.geteuid(), "made by the consumer"
            assert seen["mode"] & 0o777 == 0o600
            assert seen["mode"] & SHM_DEST, "marked for removal once mapped"
            read_entry = mappings.enter_context(sysv_page(first_id, page))

            data = read_entry()
            assert _u(data, entry, "index") == 0
            assert _u(data, entry, "ring_instance") == instance
            assert _u(data, entry, "pid") == os.getpid()
            assert _u(data, entry, "lost") == 0
            assert _u(data, entry, "armed") == 0, "never armed: no descriptor yet"
            assert _u(data, entry, "wake_nonce") == 0
            assert _u(data, entry, "wake_key") == 0
            state = _u(data, entry, "state")
            assert state & registered
            assert state >> 1 == 1, "a fresh page: claim counter 1"
            assert not any(data[entry["wake_key"][0] + 8:]), "the rest of the page is zero"

            # A descriptor: the nonce and the armed count appear in the
            # entry, and the socket is bound under the documented name.
            fd = consumer.fileno()  # arms it
            assert _u(read_entry(), entry, "armed") == 1
            assert consumer.poll() is None  # arms it again
            data = read_entry()
            nonce = _u(data, entry, "wake_nonce")
            assert nonce != 0 and _u(data, entry, "wake_key") != 0
            assert _u(data, entry, "armed") == 2
            sockname = socket.socket(fileno=os.dup(fd))
            try:
                assert sockname.getsockname() == (
                    b"\0shmq-wake-%016x-%d-%016x" % (instance, first_id, nonce))
            finally:
                sockname.close()

            for i in range(3):
                producer.publish(b"m%d" % i)
            assert consumer.poll() == b"m0"
            assert _u(read_entry(), entry, "position") == 1
            assert _u(Path(ring_path).read_bytes(), control, "head") == 3
            # Nobody waits: the producer's wake line is at rest.
            assert _u(read_wake(), wake, "producer_waiting") == 0
            # Position 1: sequences up to 4 fit; 5 would rewrite unread 1.
            producer.publish(b"m3")
            producer.publish(b"m4")
            with pytest.raises(shmq.Full):
                producer.publish(b"m5", timeout=0)
            with pytest.raises(shmq.Full):
                producer.publish(b"m5", timeout=0.05)
            # It slept: it asked for a quarter ring (one slot) before a wake.
            assert _u(read_wake(), wake, "producer_wake_at") == 5 - 4 + 1

        # Closed: unregistered (our mapping keeps the page), both locks gone.
        closed = _u(read_entry(), entry, "state")
        assert not closed & registered, "close unregisters"
        assert write_lock_in(locks, 0, 1) is None
        assert entry_page_id(locks, 0, consts) is None
        with shmq.Consumer(name):
            again = entry_page_id(locks, 0, consts)
            assert again is not None and again != first_id, "a new claim, a new page"
            with sysv_page(again, page) as read_again:
                assert _u(read_again(), entry, "state") & registered
        producer.publish(b"m5", timeout=0)  # nobody registered: room again


@needs_sysv_view
def test_a_group_page_is_found_from_the_lock_file_and_has_the_documented_bytes(queue_name):
    name = queue_name
    tables = doc_struct_tables()
    consts = doc_constants()
    ident, gpage, member = tables["shmq_identity"], tables["shmq_group_page"], tables["shmq_group_member"]
    page = os.sysconf("SC_PAGESIZE")
    ring_path = f"/dev/shm/shmq-{name}"
    members_max = consts["SHMQ_GROUP_MEMBERS_MAX"]
    size = -(-(gpage["members"][0] + gpage["members"][1]) // page) * page
    with shmq.Producer(name, slot_size=16, capacity=8, lossless=True) as producer, \
            contextlib.ExitStack() as stack:
        for i in range(3):
            producer.publish(b"m%d" % i)
        instance = _u(Path(ring_path).read_bytes(), ident, "instance")
        locks = os.open(ring_path + ".consumers", os.O_RDONLY)
        stack.callback(os.close, locks)
        assert write_lock_in(locks, consts["SHMQ_GROUP_BASE"], 1 + 16 * members_max) is None
        first = stack.enter_context(shmq.Consumer(name, start="earliest", group="workers"))
        second = stack.enter_context(shmq.Consumer(name, group="workers"))
        # Group 0, members 0 and 1: their bytes are locked; the join lock is free.
        base = consts["SHMQ_GROUP_BASE"]
        assert write_lock_in(locks, base, 1) is None
        assert write_lock_in(locks, base + 1, 1) == base + 1
        assert write_lock_in(locks, base + 2, 1) == base + 2
        assert write_lock_in(locks, base + 3, members_max - 2) is None
        # Both tell the same page id from their id ranges.
        span = consts["SHMQ_ENTRY_ID_SPAN"]
        ids = set()
        for m in (0, 1):
            start = consts["SHMQ_GROUP_ID_BASE"] + m * span
            found = write_lock_in(locks, start, span)
            assert found is not None
            ids.add(found - start)
        assert len(ids) == 1
        shm_id = ids.pop()
        seen = ipc_stat(shm_id)
        assert seen["key"] == 0 and seen["segsz"] == size
        assert seen["uid"] == os.stat(ring_path).st_uid and seen["cuid"] == os.geteuid()
        assert seen["mode"] & 0o777 == 0o600 and seen["mode"] & SHM_DEST
        read = stack.enter_context(sysv_page(shm_id, size))
        data = read()
        assert _u(data, gpage, "magic") == consts["SHMQ_GROUP_MAGIC"]
        assert data[:8] == b"shmqgrup"
        assert _u(data, gpage, "ring_instance") == instance
        offset, length = gpage["name"]
        assert data[offset:offset + length] == b"workers".ljust(length, b"\0")
        assert _u(data, gpage, "cursor") == 0, "the first member started at the earliest"
        assert _u(data, gpage, "lost") == 0
        slot0 = gpage["members"][0]
        assert _u(data, member, "pid", slot0) == os.getpid()
        assert _u(data, member, "token", slot0) == 0

        assert second.poll() == b"m0"  # one claim, returned: the cursor moved, no token
        data = read()
        assert _u(data, gpage, "cursor") == 1
        assert _u(data, member, "token", slot0 + 128) == 0
        assert _u(data, member, "received", slot0 + 128) == 1
        with first.view() as view:  # a view holds its claim until it is released
            assert bytes(view) == b"m1"
            data = read()
            assert _u(data, gpage, "cursor") == 2
            assert _u(data, member, "token", slot0) != 0
            assert _u(data, member, "claim_from", slot0) == 1
            assert _u(data, member, "claim_to", slot0) == 2
        assert _u(read(), member, "token", slot0) == 0
