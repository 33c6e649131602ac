package wire

import (
	"encoding/binary"

	"github.com/klauspost/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// HeaderDigest is the CRC32C of a PDU header (common and type-specific parts).
func HeaderDigest(hdr []byte) uint32 { return crc32.Checksum(hdr, castagnoli) }

// DataDigest is the CRC32C of a PDU's data.
func DataDigest(data []byte) uint32 { return crc32.Checksum(data, castagnoli) }

// UpdateDigest extends a CRC32C (start from 0) over data that arrives in pieces.
func UpdateDigest(crc uint32, data []byte) uint32 { return crc32.Update(crc, castagnoli, data) }

// PutDigest writes a digest as it travels: little endian.
func PutDigest(b []byte, crc uint32) { binary.LittleEndian.PutUint32(b, crc) }

// GetDigest reads a digest from the wire.
func GetDigest(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
