//! Tiny hand-made guests: a PVH-bootable ELF whose entry runs a few bytes of 32-bit code.
//! They start in milliseconds and exercise the VMM's failure paths deterministically.

const ENTRY: u64 = 0x10_0000;
const CODE_OFFSET: usize = 0x1000;
const NOTE_OFFSET: usize = 0x200;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// `mov al, CODE; out 0xf4, al; jmp $`: power off through the debug-exit port.
pub fn debug_exit(code: u8) -> Vec<u8> {
    vec![0xb0, code, 0xe6, 0xf4, 0xeb, 0xfe]
}
/// `int3` at CPL 0 with no usable IDT.
pub const INT3: &[u8] = &[0xcc, 0x90, 0x90, 0x90];
/// `cli; jmp $`: runnable forever at one RIP.
pub const SPIN: &[u8] = &[0xfa, 0xeb, 0xfe];
/// `mov eax, 9 (KVM_HC_CLOCK_PAIRING); vmcall; jmp $`.
pub const VMCALL_CLOCK_PAIRING: &[u8] = &[0xb8, 0x09, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xeb, 0xfe];
/// Waits for a byte on ttyS0 (polls LSR bit 0), reads it, and writes it to the debug-exit
/// port: the VMM's exit status is then the first byte the host sent to the guest's console.
pub const ECHO_SERIAL_BYTE_AS_EXIT: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, // wait: mov dx, 0x3fd (line status)
    0xec, //                          in al, dx
    0xa8, 0x01, //                    test al, 1 (data ready)
    0x74, 0xf7, //                    jz wait
    0x66, 0xba, 0xf8, 0x03, //        mov dx, 0x3f8 (receive buffer)
    0xec, //                          in al, dx
    0xe6, 0xf4, //                    out 0xf4, al
    0xeb, 0xfe, //                    jmp $
];
/// `mov eax, 0xd0001000; jmp eax`: fetch code from the device window (no RAM there).
pub const JUMP_TO_MMIO: &[u8] = &[0xb8, 0x00, 0x10, 0x00, 0xd0, 0xff, 0xe0];

/// An x86_64 ELF executable with a PVH entry note pointing at `code`, loaded at 1 MiB.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    for v in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
        note.extend_from_slice(&v.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(ENTRY as u32).to_le_bytes());

    let mut img = vec![0u8; CODE_OFFSET + code.len()];
    let mut eh = Vec::new();
    eh.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    eh.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    eh.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    eh.extend_from_slice(&1u32.to_le_bytes());
    eh.extend_from_slice(&ENTRY.to_le_bytes());
    eh.extend_from_slice(&64u64.to_le_bytes()); // phoff
    eh.extend_from_slice(&0u64.to_le_bytes()); // shoff
    eh.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 2, 0, 0, 0] {
        eh.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    img[..eh.len()].copy_from_slice(&eh);
    let phdr = |kind: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
        let mut p = Vec::new();
        p.extend_from_slice(&kind.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        for v in [off, addr, addr, size, size, align] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p
    };
    let load = phdr(1, 5, CODE_OFFSET as u64, ENTRY, code.len() as u64, 0x1000);
    let pt_note = phdr(4, 4, NOTE_OFFSET as u64, 0, note.len() as u64, 4);
    img[64..120].copy_from_slice(&load);
    img[120..176].copy_from_slice(&pt_note);
    img[NOTE_OFFSET..NOTE_OFFSET + note.len()].copy_from_slice(&note);
    img[CODE_OFFSET..].copy_from_slice(code);
    img
}

/// Like [`pvh_elf`] but for another machine type (not x86_64).
pub fn foreign_elf(machine: u16) -> Vec<u8> {
    let mut img = pvh_elf(SPIN);
    img[18..20].copy_from_slice(&machine.to_le_bytes());
    img
}
