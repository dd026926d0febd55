//! virtio-blk against guest memory and a temporary image: each request type, and every kind of
//! malformed chain getting an error status while the device keeps serving.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::host_file::HostFileError;
use crate::virtio::block::DiskError;
use crate::virtio::test_utils::*;
use crate::virtio::VirtioDevice;

const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0x8000;

fn image(sectors: u64) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(sectors * 512).unwrap();
    f
}

fn block(path: &Path, ro: bool) -> Block {
    Block::new(DiskImage::open(path, ro, Some("kiln-serial")).unwrap()).unwrap()
}

fn header(mem: &GuestMemoryMmap, ty: u32, sector: u64) {
    mem.write_obj(ty, GuestAddress(HDR)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

/// Header, one data buffer (device-writable if `write`), status.
fn request(data_len: u32, data_writable: bool) -> Vec<virtio_queue::desc::RawDescriptor> {
    let data_flags = F_NEXT | if data_writable { F_WRITE } else { 0 };
    vec![
        desc(HDR, 16, F_NEXT, 1),
        desc(DATA, data_len, data_flags, 2),
        desc(STATUS, 1, F_WRITE, 0),
    ]
}

/// Runs one request chain through a fresh activation of `dev`; returns (status, used len).
fn run(
    dev: &mut Block,
    mem: &GuestMemoryMmap,
    descs: &[virtio_queue::desc::RawDescriptor],
) -> (u8, u32) {
    let q = mock_queue(mem, 0);
    add_chain(&q, descs, 0);
    dev.activate(activation(mem, &[&q], 0)).unwrap();
    let (idx, id, len) = used(&q, 0);
    assert_eq!(
        (idx, id),
        (1, 0),
        "the chain must be returned to the driver"
    );
    dev.reset();
    (read_u8(mem, STATUS), len)
}

#[test]
fn write_then_read_round_trips_through_the_image() {
    let img = image(64);
    let mem = guest_memory();
    let mut dev = block(img.as_path(), false);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 8);
    assert_eq!(run(&mut dev, &mem, &request(4096, false)), (0, 1));
    let on_disk = std::fs::read(img.as_path()).unwrap();
    assert_eq!(&on_disk[8 * 512..8 * 512 + 4096], &pattern[..]);

    mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_IN, 8);
    assert_eq!(run(&mut dev, &mem, &request(4096, true)), (0, 4097));
    let mut back = vec![0u8; 4096];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);
}

#[test]
fn flush_get_id_and_unsupported_types() {
    let img = image(8);
    let mem = guest_memory();
    let mut dev = block(img.as_path(), false);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let flush = [desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)];
    assert_eq!(run(&mut dev, &mem, &flush), (0, 1));

    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(run(&mut dev, &mem, &request(20, true)), (0, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"kiln-serial");
    assert_eq!(&id[11..], &[0u8; 9]);

    header(&mem, 0x77, 0);
    assert_eq!(run(&mut dev, &mem, &flush).0, VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn requests_outside_the_disk_or_not_whole_sectors_fail() {
    let img = image(8);
    let mem = guest_memory();
    let mut dev = block(img.as_path(), false);
    header(&mem, VIRTIO_BLK_T_IN, 7);
    assert_eq!(
        run(&mut dev, &mem, &request(1024, true)).0,
        1,
        "past the end"
    );
    header(&mem, VIRTIO_BLK_T_IN, u64::MAX);
    assert_eq!(
        run(&mut dev, &mem, &request(512, true)).0,
        1,
        "sector overflow"
    );
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        run(&mut dev, &mem, &request(100, false)).0,
        1,
        "partial sector"
    );
}

#[test]
fn wrong_direction_buffers_get_an_error_status() {
    let img = image(8);
    let mem = guest_memory();
    let mut dev = block(img.as_path(), false);
    // A read whose data buffer the device may not write.
    header(&mem, VIRTIO_BLK_T_IN, 0);
    assert_eq!(run(&mut dev, &mem, &request(512, false)).0, 1);
    // A write whose data buffer is device-writable.
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(run(&mut dev, &mem, &request(512, true)).0, 1);
    // A header the device may write, before a readable buffer: rejected as a chain.
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    let bad = [
        desc(HDR, 16, F_NEXT | F_WRITE, 1),
        desc(DATA, 512, F_NEXT, 2),
        desc(STATUS, 1, F_WRITE, 0),
    ];
    assert_eq!(run(&mut dev, &mem, &bad), (0xff, 0));
    // A status byte the device may not write: nothing to report into.
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let ro_status = [
        desc(HDR, 16, F_NEXT, 1),
        desc(DATA, 512, F_NEXT | F_WRITE, 2),
        desc(STATUS, 1, 0, 0),
    ];
    assert_eq!(run(&mut dev, &mem, &ro_status), (0xff, 0));
}

#[test]
fn chains_outside_memory_looping_or_absurdly_long_are_refused_and_the_device_goes_on() {
    let img = image(8);
    let mem = guest_memory();
    let mut dev = block(img.as_path(), false);
    let outside = MEM_SIZE as u64 - 256;
    let cases: Vec<Vec<_>> = vec![
        // Data buffer straddling the end of guest memory.
        vec![
            desc(HDR, 16, F_NEXT, 1),
            desc(outside, 4096, F_NEXT | F_WRITE, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
        // Header far beyond guest memory.
        vec![desc(1 << 40, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)],
        // A loop: 0 -> 1 -> 0.
        vec![
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 512, F_NEXT | F_WRITE, 0),
        ],
        // Next index past the descriptor table.
        vec![
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 512, F_NEXT | F_WRITE, 900),
        ],
        // 4 GiB - 1 of data.
        vec![
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, u32::MAX, F_NEXT | F_WRITE, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
    ];
    for (i, chain) in cases.iter().enumerate() {
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let (status, len) = run(&mut dev, &mem, chain);
        assert_eq!(
            (status, len),
            (0xff, 0),
            "case {i}: no status, nothing used"
        );
    }
    // Still serving good requests.
    header(&mem, VIRTIO_BLK_T_IN, 0);
    assert_eq!(run(&mut dev, &mem, &request(512, true)), (0, 513));
}

#[test]
fn a_bad_chain_between_good_ones_does_not_stop_the_queue() {
    let img = image(8);
    let mem = guest_memory();
    let mut dev = block(img.as_path(), false);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let q = mock_queue(&mem, 0);
    add_chain(
        &q,
        &[desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)],
        0,
    );
    add_chain(&q, &[desc(1 << 40, 16, 0, 0)], 2);
    add_chain(
        &q,
        &[desc(HDR, 16, F_NEXT, 4), desc(STATUS, 1, F_WRITE, 0)],
        3,
    );
    dev.activate(activation(&mem, &[&q], 0)).unwrap();
    assert_eq!(used(&q, 0), (3, 0, 1));
    assert_eq!(used(&q, 1), (3, 2, 0));
    assert_eq!(used(&q, 2), (3, 3, 1));
}

#[test]
fn read_only_disks_refuse_writes_and_offer_the_ro_feature() {
    let img = image(8);
    std::fs::write(img.as_path(), vec![0x5a; 8 * 512]).unwrap();
    let mem = guest_memory();
    let mut dev = block(img.as_path(), true);
    assert_ne!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(run(&mut dev, &mem, &request(512, false)).0, 1);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    assert_eq!(run(&mut dev, &mem, &request(512, true)), (0, 513));
    assert_eq!(std::fs::read(img.as_path()).unwrap(), vec![0x5a; 8 * 512]);
}

#[test]
fn discard_and_write_zeroes_punch_holes() {
    let img = image(2048);
    std::fs::write(img.as_path(), vec![0xaa; 2048 * 512]).unwrap();
    let blocks_before = std::fs::metadata(img.as_path()).unwrap().blocks();
    let mem = guest_memory();
    let mut dev = block(img.as_path(), false);
    for (ty, sector) in [
        (VIRTIO_BLK_T_DISCARD, 0u64),
        (VIRTIO_BLK_T_WRITE_ZEROES, 1024),
    ] {
        mem.write_obj(sector, GuestAddress(DATA)).unwrap();
        mem.write_obj(1024u32, GuestAddress(DATA + 8)).unwrap();
        mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        header(&mem, ty, 0);
        assert_eq!(run(&mut dev, &mem, &request(16, false)), (0, 1));
    }
    let meta = std::fs::metadata(img.as_path()).unwrap();
    assert_eq!(meta.len(), 2048 * 512, "the image keeps its size");
    assert!(
        meta.blocks() < blocks_before / 4,
        "{} -> {} blocks",
        blocks_before,
        meta.blocks()
    );
    assert!(std::fs::read(img.as_path())
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    // A range past the end fails.
    mem.write_obj(2040u64, GuestAddress(DATA)).unwrap();
    mem.write_obj(16u32, GuestAddress(DATA + 8)).unwrap();
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(run(&mut dev, &mem, &request(16, false)).0, 1);
}

#[test]
fn config_space_reports_capacity() {
    let img = image(4096);
    let dev = block(img.as_path(), false);
    let cap = u64::from_le_bytes(dev.config_space()[..8].try_into().unwrap());
    assert_eq!(cap, 4096);
}

#[test]
fn opening_bad_images_fails_clearly() {
    let missing = DiskImage::open(Path::new("/nonexistent/kiln.img"), false, None).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/kiln.img"),
        "{missing}"
    );
    let dir = DiskImage::open(Path::new("/tmp"), true, None).unwrap_err();
    assert!(
        matches!(dir, DiskError::File(HostFileError::WrongType { .. })),
        "{dir}"
    );
    let empty = TempFile::new().unwrap();
    let e = DiskImage::open(empty.as_path(), false, None).unwrap_err();
    assert!(matches!(e, DiskError::TooSmall(_)), "{e}");
    let img = image(8);
    let _held = DiskImage::open(img.as_path(), false, None).unwrap();
    let e = DiskImage::open(img.as_path(), false, None).unwrap_err();
    assert!(matches!(e, DiskError::Locked(_)), "{e}");
}

#[test]
fn unsafe_cache_leaves_flush_out_and_replacing_the_disk_updates_capacity() {
    let (a, b) = (image(8), image(64));
    let dev = Block::with_flush(DiskImage::open(a.as_path(), false, None).unwrap(), false).unwrap();
    assert_eq!(dev.features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    drop(dev); // releases the image lock
    let mut dev = block(a.as_path(), false);
    assert_ne!(dev.features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    let mem = guest_memory();
    let q = mock_queue(&mem, 0);
    let act = activation(&mem, &[&q], 0);
    let irq = act.interrupt.clone();
    dev.activate(act).unwrap();
    assert_eq!(&dev.config_space()[..8], &8u64.to_le_bytes());
    let generation = dev.config_generation();
    dev.replace_disk(DiskImage::open(b.as_path(), false, None).unwrap());
    assert_eq!(&dev.config_space()[..8], &64u64.to_le_bytes());
    assert_eq!(irq.status() & 2, 2, "config-change interrupt raised");
    // Review defect (issue 14): the generation must change with the capacity, or a driver
    // reading the 8-byte capacity across the swap cannot tell it read a torn value.
    assert_ne!(dev.config_generation(), generation);
}
