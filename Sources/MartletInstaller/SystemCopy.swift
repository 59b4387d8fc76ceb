import CArchive
import Foundation
import MartletCore

/// Copies a root filesystem tree with libarchive, read_disk → write_disk: owners (numeric,
/// never remapped through the live system's passwd), modes, times, xattrs, ACLs, file flags,
/// hardlinks, symlinks, device nodes and holes of sparse files.
public enum SystemCopy {
    public struct Totals: Sendable, Equatable {
        public var bytes: UInt64 = 0
        public var files: UInt64 = 0
    }

    /// Sizes the tree first (for percent) with the same traversal as the copy.
    public static func measure(_ source: String) throws -> Totals {
        guard let reader = archive_read_disk_new() else {
            throw MartletError(.failed, "archive_read_disk_new failed")
        }
        defer { archive_read_free(reader) }
        archive_read_disk_set_symlink_physical(reader)
        archive_read_disk_set_behavior(
            reader,
            ARCHIVE_READDISK_NO_TRAVERSE_MOUNTS | ARCHIVE_READDISK_NO_XATTR
                | ARCHIVE_READDISK_NO_ACL
                | ARCHIVE_READDISK_NO_FFLAGS)
        guard archive_read_disk_open(reader, source) == ARCHIVE_OK else {
            let message =
                archive_error_string(reader).map { String(cString: $0) } ?? "unknown error"
            throw MartletError(.failed, "cannot read the source tree '\(source)'", cause: message)
        }
        var totals = Totals()
        let entry = archive_entry_new()
        defer { archive_entry_free(entry) }
        while archive_read_next_header2(reader, entry) >= ARCHIVE_WARN {
            archive_read_disk_descend(reader)
            totals.files += 1
            if archive_entry_filetype(entry) == S_IFREG {
                totals.bytes += UInt64(max(archive_entry_size(entry), 0))
            }
        }
        return totals
    }

    /// Copies everything under `source` into the existing directory `target`.
    /// `progress` is called every few megabytes with the running totals.
    @discardableResult
    public static func copy(
        from source: String, to target: String, progress: (Totals) -> Void = { _ in }
    ) throws -> Totals {
        guard let reader = archive_read_disk_new() else {
            throw MartletError(.failed, "archive_read_disk_new failed")
        }
        defer { archive_read_free(reader) }
        guard let writer = archive_write_disk_new() else {
            throw MartletError(.failed, "archive_write_disk_new failed")
        }
        defer { archive_write_free(writer) }
        func fail(_ archive: OpaquePointer, _ call: String, _ path: String) -> MartletError {
            let message =
                archive_error_string(archive).map { String(cString: $0) } ?? "unknown error"
            return MartletError(
                .failed, "copying the system: \(call) failed on '\(path)'", cause: message)
        }
        archive_read_disk_set_symlink_physical(reader)
        archive_read_disk_set_behavior(reader, ARCHIVE_READDISK_NO_TRAVERSE_MOUNTS)
        let options =
            ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME
            | ARCHIVE_EXTRACT_ACL
            | ARCHIVE_EXTRACT_XATTR | ARCHIVE_EXTRACT_FFLAGS
        archive_write_disk_set_options(writer, options)
        guard archive_read_disk_open(reader, source) == ARCHIVE_OK else {
            throw fail(reader, "archive_read_disk_open", source)
        }
        let prefix = source.hasSuffix("/") ? source : source + "/"
        let base = target.hasSuffix("/") ? String(target.dropLast()) : target
        var totals = Totals()
        var reported: UInt64 = 0
        var firstPaths: [String: String] = [:]
        let entry = archive_entry_new()
        defer { archive_entry_free(entry) }
        while true {
            let status = archive_read_next_header2(reader, entry)
            if status == ARCHIVE_EOF { break }
            let sourcePath = archive_entry_sourcepath(entry).map { String(cString: $0) } ?? "?"
            if status < ARCHIVE_WARN { throw fail(reader, "reading", sourcePath) }
            archive_read_disk_descend(reader)
            let relative =
                sourcePath == source || sourcePath + "/" == prefix
                ? "" : String(sourcePath.dropFirst(prefix.count))
            let destination = relative.isEmpty ? base : "\(base)/\(relative)"
            archive_entry_set_pathname(entry, destination)
            // Without a lookup the entry carries numeric ids only: the target's passwd rules.
            archive_entry_set_uname(entry, nil)
            archive_entry_set_gname(entry, nil)
            let isRegular = archive_entry_filetype(entry) == S_IFREG
            if isRegular && archive_entry_nlink(entry) > 1 {
                let key = "\(archive_entry_dev(entry)):\(archive_entry_ino64(entry))"
                if let first = firstPaths[key] {
                    archive_entry_set_hardlink(entry, first)
                    archive_entry_set_size(entry, 0)
                    guard archive_write_header(writer, entry) >= ARCHIVE_WARN else {
                        throw fail(writer, "linking", destination)
                    }
                    totals.files += 1
                    continue
                }
                firstPaths[key] = destination
            }
            guard archive_write_header(writer, entry) >= ARCHIVE_WARN else {
                throw fail(writer, "creating", destination)
            }
            totals.files += 1
            if isRegular && archive_entry_size(entry) > 0 {
                var buffer: UnsafeRawPointer?
                var size = 0
                var offset: la_int64_t = 0
                while true {
                    let read = archive_read_data_block(reader, &buffer, &size, &offset)
                    if read == ARCHIVE_EOF { break }
                    guard read >= ARCHIVE_WARN else { throw fail(reader, "reading", sourcePath) }
                    guard archive_write_data_block(writer, buffer, size, offset) >= ARCHIVE_WARN
                    else {
                        throw fail(writer, "writing", destination)
                    }
                    totals.bytes += UInt64(size)
                }
            }
            guard archive_write_finish_entry(writer) >= ARCHIVE_WARN else {
                throw fail(writer, "finishing", destination)
            }
            if totals.bytes - reported >= 8 << 20 {
                reported = totals.bytes
                progress(totals)
            }
        }
        guard archive_write_close(writer) >= ARCHIVE_WARN else {
            throw fail(writer, "archive_write_close (directory times and modes)", target)
        }
        progress(totals)
        return totals
    }
}
