import CArchive
import Foundation
import MartletCore

/// Writes a folder as a zstd-compressed newc cpio archive — the format the Linux kernel
/// unpacks as an initramfs. Entries are sorted, owned by root and stamped with one time,
/// so the same folder always gives the same bytes.
enum CPIOWriter {
    static func write(tree: String, to path: String, epoch: Int) throws {
        guard let archive = archive_write_new() else {
            throw MartletError(.failed, "archive_write_new failed")
        }
        defer { archive_write_free(archive) }
        func check(_ status: Int32, _ call: String) throws {
            guard status == ARCHIVE_OK else {
                let message = archive_error_string(archive).map { String(cString: $0) } ?? "unknown"
                throw MartletError(.failed, "libarchive '\(call)' failed for '\(path)': \(message)")
            }
        }
        try check(archive_write_set_format_cpio_newc(archive), "archive_write_set_format_cpio_newc")
        try check(archive_write_add_filter_zstd(archive), "archive_write_add_filter_zstd")
        try check(archive_write_open_filename(archive, path), "archive_write_open_filename")

        var inode: Int64 = 1
        for relative in try entries(of: tree) {
            let full = tree + "/" + relative
            var info = stat()
            guard lstat(full, &info) == 0 else { throw MartletError.system("lstat", path: full) }
            guard let entry = archive_entry_new() else {
                throw MartletError(.failed, "archive_entry_new failed")
            }
            defer { archive_entry_free(entry) }
            archive_entry_set_pathname(entry, relative)
            archive_entry_set_perm(entry, mode_t(info.st_mode & 0o7777))
            archive_entry_set_uid(entry, 0)
            archive_entry_set_gid(entry, 0)
            archive_entry_set_mtime(entry, time_t(epoch), 0)
            archive_entry_set_ino64(entry, inode)
            inode += 1
            var contents: Data?
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                archive_entry_set_filetype(entry, 0o040000)
                archive_entry_set_nlink(entry, 2)
                archive_entry_set_size(entry, 0)
            case S_IFLNK:
                archive_entry_set_filetype(entry, 0o120000)
                let target = try FileManager.default.destinationOfSymbolicLink(atPath: full)
                archive_entry_set_symlink(entry, target)
                archive_entry_set_nlink(entry, 1)
                archive_entry_set_size(entry, Int64(target.utf8.count))
            case S_IFREG:
                archive_entry_set_filetype(entry, 0o100000)
                archive_entry_set_nlink(entry, 1)
                guard let data = FileManager.default.contents(atPath: full) else {
                    throw MartletError.system("read", path: full)
                }
                contents = data
                archive_entry_set_size(entry, Int64(data.count))
            default:
                throw MartletError(
                    .invalidInput, "initramfs tree holds '\(relative)', which is not a file, folder or symlink")
            }
            try check(archive_write_header(archive, entry), "archive_write_header(\(relative))")
            if let contents, !contents.isEmpty {
                let written = contents.withUnsafeBytes {
                    archive_write_data(archive, $0.baseAddress, $0.count)
                }
                guard written == contents.count else {
                    try check(ARCHIVE_FATAL, "archive_write_data(\(relative))")
                    return
                }
            }
        }
        try check(archive_write_close(archive), "archive_write_close")
    }

    /// Every path below `tree`, parents before children, in byte order.
    static func entries(of tree: String) throws -> [String] {
        var result: [String] = []
        func walk(_ relative: String) throws {
            let full = relative.isEmpty ? tree : tree + "/" + relative
            for name in try FileManager.default.contentsOfDirectory(atPath: full).sorted() {
                let child = relative.isEmpty ? name : relative + "/" + name
                result.append(child)
                var info = stat()
                if lstat(tree + "/" + child, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
                    try walk(child)
                }
            }
        }
        try walk("")
        return result
    }
}
