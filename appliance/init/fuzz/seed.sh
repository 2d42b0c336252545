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
