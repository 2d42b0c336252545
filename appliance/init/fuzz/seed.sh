#!/usr/bin/env bash
# Seeds the ovf_env corpus with vCenter-like OVF environment documents.
set -euo pipefail
cd "$(dirname "$0")"
d=corpus/ovf_env
mkdir -p "$d"
cat > "$d/vcenter.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="" ve:vCenterId="vm-42">
   <PlatformSection><Kind>VMware ESXi</Kind><Version>8.0.2</Version><Vendor>VMware, Inc.</Vendor><Locale>en</Locale></PlatformSection>
   <PropertySection>
         <Property oe:key="ferry.hostname" oe:value="backup-01"/>
         <Property oe:key="ferry.ip" oe:value="192.0.2.10"/>
         <Property oe:key="ferry.token" oe:value="a&amp;b&#x41;"/>
   </PropertySection>
   <ve:EthernetAdapterSection><ve:Adapter ve:mac="00:50:56:aa:bb:cc" ve:network="VM Network" ve:unitNumber="7"/></ve:EthernetAdapterSection>
</Environment>
XML
cat > "$d/vapp.xml" <<'XML'
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection><Property oe:key="a" oe:value="1"/></PropertySection><Entity oe:id="b"><PropertySection><Property oe:key="a" oe:value="2"/></PropertySection></Entity></Environment>
XML
printf '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"><PropertySection>' > "$d/truncated.xml"
c=corpus/config
mkdir -p "$c"
printf 'BOOT_IMAGE=/vmlinuz console=ttyS0 ferry.ip=10.0.2.77/24 ferry.gateway=10.0.2.2 ferry.dns=10.0.2.3,1.1.1.1 ferry.hostname="backup-01"\0ntp=pool.ntp.org\nmgmt=[::1]:9876\nnetmask=255.255.255.0\n\0{"token":"abc","vcenter_password":"S3CR3T\\u0001","debug":"1","log":5}' > "$c/all"
printf 'ferry.net=static ferry.ip=10.0.2.999 ferry.token=S3CR3T\x01 ferry.vcenter_thumbprint=ab:cd ferry.bogus' > "$c/bad"
