//! Boot information handed to the kernel: PVH `hvm_start_info` or the Linux zero page, each with
//! the memory map, command line and initrd.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{
    usable_ram, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

const E820_RAM: u32 = 1;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Where the initrd was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub address: u64,
    pub size: u64,
}

#[derive(Debug, Error)]
pub enum BootInfoError {
    #[error("writing PVH start info: {0}")]
    Pvh(linux_loader::configurator::Error),
    #[error("writing the Linux zero page: {0}")]
    ZeroPage(linux_loader::configurator::Error),
    #[error("the memory map has more entries than the zero page holds")]
    TooManyE820Entries,
}

/// Writes `hvm_start_info`, its memory map and (with an initrd) its module list.
pub fn setup_pvh(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootInfoError> {
    let memmap: Vec<hvm_memmap_table_entry> = usable_ram(mem_bytes)
        .into_iter()
        .map(|(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: if cmdline_len > 0 { CMDLINE_START } else { 0 },
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.address,
            size: i.size,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootInfoError::Pvh)
}

/// Writes the Linux zero page for the 64-bit boot protocol. `header` is the kernel's own setup
/// header (bzImage) or `None` for a plain ELF entered at its 64-bit entry point.
pub fn setup_zero_page(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootInfoError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.address as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    let ram = usable_ram(mem_bytes);
    if ram.len() > params.e820_table.len() {
        return Err(BootInfoError::TooManyE820Entries);
    }
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(ram.iter()) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = ram.len() as u8;
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(BootInfoError::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn pvh_start_info_points_at_memmap_cmdline_and_initrd() {
        let m = mem();
        let initrd = InitrdPlacement {
            address: 0x300_0000,
            size: 0x1234,
        };
        setup_pvh(&m, 64 << 20, 10, Some(initrd)).unwrap();
        let si: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC);
        assert_eq!(si.cmdline_paddr, CMDLINE_START);
        assert_eq!(si.memmap_entries, 2);
        assert_eq!(si.nr_modules, 1);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(si.memmap_paddr + 24)).unwrap();
        assert_eq!(
            (e.addr, e.size, e.type_),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
    }

    #[test]
    fn zero_page_carries_e820_cmdline_and_initrd() {
        let m = mem();
        let initrd = InitrdPlacement {
            address: 0x200_0000,
            size: 77,
        };
        setup_zero_page(&m, 64 << 20, None, 42, Some(initrd)).unwrap();
        let bp: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ bp.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ bp.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ bp.hdr.ramdisk_image }, 0x200_0000);
        assert_eq!({ bp.hdr.ramdisk_size }, 77);
        assert_eq!(bp.e820_entries, 2);
    }
}
