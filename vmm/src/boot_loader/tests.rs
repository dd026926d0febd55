//! Unit tests for kernel and initrd loading: format detection and size checks.

use super::*;
use std::io::Write;

fn mem(mib: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (mib << 20) as usize)]).unwrap()
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kiln-loader-{}-{name}", std::process::id()));
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

/// A minimal ELF64 executable with one PT_LOAD segment of `memsz` bytes at `paddr`.
fn elf(class: u8, machine: u16, kind: u16, paddr: u64, memsz: u64) -> Vec<u8> {
    let mut e = vec![0u8; 0x200];
    e[0..4].copy_from_slice(ELF_MAGIC);
    e[4] = class;
    e[5] = ELFDATA2LSB;
    e[6] = 1;
    e[16..18].copy_from_slice(&kind.to_le_bytes());
    e[18..20].copy_from_slice(&machine.to_le_bytes());
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&paddr.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes());
    e[54..56].copy_from_slice(&56u16.to_le_bytes());
    e[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    e[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
    e[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes()); // offset
    e[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
    e[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
    e[ph + 32..ph + 40].copy_from_slice(&0x10u64.to_le_bytes()); // filesz
    e[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
    e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    e[0x100..0x110].copy_from_slice(&[0x90; 16]);
    e
}

#[test]
fn loads_a_minimal_elf_at_its_physical_address() {
    let m = mem(32);
    let p = temp_file(
        "ok.elf",
        &elf(ELFCLASS64, EM_X86_64, ET_EXEC, 0x100_0000, 0x2000),
    );
    let k = load_kernel(&m, 32 << 20, &p).unwrap();
    assert_eq!(k.mode, EntryMode::Linux64);
    assert_eq!(k.entry, 0x100_0000);
    assert_eq!(k.end, 0x100_2000);
    let mut b = [0u8; 4];
    m.read_slice(&mut b, GuestAddress(0x100_0000)).unwrap();
    assert_eq!(b, [0x90; 4]);
    std::fs::remove_file(p).unwrap();
}

#[test]
fn rejects_wrong_kinds_of_file_clearly() {
    let m = mem(32);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", vec![0xab; 8192], "not a Linux kernel"),
        ("empty", vec![], "not a Linux kernel"),
        (
            "elf32",
            elf(1, EM_X86_64, ET_EXEC, 0x100_0000, 16),
            "need 64-bit",
        ),
        (
            "arm64",
            elf(ELFCLASS64, 183, ET_EXEC, 0x100_0000, 16),
            "machine type 183",
        ),
        (
            "pie",
            elf(ELFCLASS64, EM_X86_64, 3, 0x100_0000, 16),
            "ELF type 3",
        ),
        ("truncated", ELF_MAGIC.to_vec(), "truncated"),
    ];
    for (name, bytes, needle) in cases {
        let p = temp_file(name, &bytes);
        let err = load_kernel(&m, 32 << 20, &p).unwrap_err().to_string();
        assert!(err.contains(needle), "{name}: {err}");
        std::fs::remove_file(p).unwrap();
    }
    let err = load_kernel(&m, 32 << 20, Path::new("/nonexistent/vmlinux"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot open kernel image /nonexistent/vmlinux"),
        "{err}"
    );
}

#[test]
fn kernel_larger_than_memory_is_reported_in_mib() {
    let m = mem(16);
    let p = temp_file(
        "big.elf",
        &elf(ELFCLASS64, EM_X86_64, ET_EXEC, 0x100_0000, 20 << 20),
    );
    let err = load_kernel(&m, 16 << 20, &p).unwrap_err().to_string();
    assert!(
        err.contains("needs memory up to 36 MiB, the VM has 16 MiB"),
        "{err}"
    );
    std::fs::remove_file(p).unwrap();
}

#[test]
fn bzimage_without_64bit_entry_is_refused() {
    let mut img = vec![0u8; 0x1000];
    img[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4].copy_from_slice(BZIMAGE_MAGIC);
    img[0x206..0x208].copy_from_slice(&0x20bu16.to_le_bytes());
    let p = temp_file("old.bz", &img);
    let err = load_kernel(&mem(32), 32 << 20, &p).unwrap_err().to_string();
    assert!(err.contains("without a 64-bit entry point"), "{err}");
    std::fs::remove_file(p).unwrap();
}

#[test]
fn initrd_goes_high_and_must_fit_above_the_kernel() {
    let m = mem(32);
    let kernel = LoadedKernel {
        entry: 0,
        mode: EntryMode::Pvh,
        setup_header: None,
        end: 0x100_0000,
        initrd_limit: 32 << 20,
    };
    let p = temp_file("initrd", &[7u8; 5000]);
    let placed = load_initrd(&m, 32 << 20, &p, &kernel).unwrap();
    assert_eq!(placed.size, 5000);
    assert_eq!(placed.address % PAGE_SIZE, 0);
    assert!(placed.address + 5000 <= 32 << 20 && placed.address >= kernel.end);
    let mut b = [0u8; 2];
    m.read_slice(&mut b, GuestAddress(placed.address + 4998))
        .unwrap();
    assert_eq!(b, [7, 7]);
    std::fs::remove_file(&p).unwrap();

    let big = temp_file("initrd-big", &vec![1u8; 17 << 20]);
    let err = load_initrd(&m, 32 << 20, &big, &kernel)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not fit in guest memory (32 MiB)"),
        "{err}"
    );
    std::fs::remove_file(&big).unwrap();

    let empty = temp_file("initrd-empty", &[]);
    assert!(load_initrd(&m, 32 << 20, &empty, &kernel)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    std::fs::remove_file(&empty).unwrap();
}

/// Review defect (issue 14): crafted headers panicked the main thread instead of answering 400.
#[test]
fn crafted_kernel_headers_are_refused_not_panics() {
    let m = mem(32);
    // A bzImage cut off inside its setup header: "HdrS" present, the fields after it missing.
    for len in [0x206, 0x207, 0x230, 0x263] {
        let mut img = vec![0u8; len];
        img[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4].copy_from_slice(BZIMAGE_MAGIC);
        if len >= 0x208 {
            img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        }
        if len >= 0x238 {
            img[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        }
        let p = temp_file(&format!("short-{len}.bz"), &img);
        let err = load_kernel(&m, 32 << 20, &p).unwrap_err().to_string();
        assert!(
            err.contains("truncated bzImage setup header"),
            "{len}: {err}"
        );
        std::fs::remove_file(p).unwrap();
    }
    // pref_address + init_size past the end of the address space.
    let mut img = vec![0u8; 0x1000];
    img[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4].copy_from_slice(BZIMAGE_MAGIC);
    img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
    img[0x258..0x260].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
    img[0x260..0x264].copy_from_slice(&0x1000u32.to_le_bytes());
    let p = temp_file("wrap.bz", &img);
    let err = load_kernel(&m, 32 << 20, &p).unwrap_err().to_string();
    assert!(err.contains("wraps the address space"), "{err}");
    std::fs::remove_file(p).unwrap();
    // An ELF whose program header offset wraps when the entry's size is added.
    let mut e = elf(ELFCLASS64, EM_X86_64, ET_EXEC, 0x100_0000, 0x2000);
    e[32..40].copy_from_slice(&(u64::MAX - 20).to_le_bytes());
    let p = temp_file("wrap.elf", &e);
    let err = load_kernel(&m, 32 << 20, &p).unwrap_err().to_string();
    assert!(
        err.contains("program headers lie outside the file"),
        "{err}"
    );
    std::fs::remove_file(p).unwrap();
}
