; The cyphonic installer for Windows (built by scripts/build-windows.sh).
;
;   makensis -DVERSION=0.1.0 -DSTAGE=<folder> -DOUTFILE=<setup.exe> cyphonic.nsi
;
; STAGE holds cyphonic.exe, cyphonic-starter.exe, wintun.dll and, for an
; installer made for one deployment, the cloud's root.pem.
; Installs into Program Files, registers the uninstaller, adds a Start menu
; entry for the starter and, unless silent (/S), opens the starter, which
; enrolls the device and starts the service. The uninstaller stops and
; deletes the service (which removes the NRPT rule; the wintun adapter
; goes with the daemon's handle on it) and removes the files; the node's
; state in %ProgramData%\cyphonic stays unless /PURGE is given.

Target amd64-unicode
!include "FileFunc.nsh"

!ifndef VERSION
  !define VERSION "0.0.0"
!endif
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\cyphonic"

Name "cyphonic ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\cyphonic"
RequestExecutionLevel admin
SetCompressor /SOLID lzma
ShowInstDetails show

Page directory
Page instfiles
UninstPage uninstConfirm
UninstPage instfiles

Section "cyphonic"
  SetOutPath "$INSTDIR"
  ; A running service holds cyphonic.exe open: stop it for an upgrade.
  IfFileExists "$INSTDIR\cyphonic.exe" 0 +2
    nsExec::Exec '"$INSTDIR\cyphonic.exe" node service uninstall'
  File "${STAGE}\cyphonic.exe"
  File "${STAGE}\cyphonic-starter.exe"
  File "${STAGE}\wintun.dll"
  !if /FileExists "${STAGE}\root.pem"
    File "${STAGE}\root.pem"
  !endif
  WriteUninstaller "$INSTDIR\uninstall.exe"

  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayName" "cyphonic"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "Publisher" "cyphonic"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoRepair" 1

  SetShellVarContext all
  CreateShortCut "$SMPROGRAMS\cyphonic starter.lnk" "$INSTDIR\cyphonic-starter.exe"

  IfSilent +2
    Exec '"$INSTDIR\cyphonic-starter.exe"'
SectionEnd

Section "Uninstall"
  nsExec::Exec '"$INSTDIR\cyphonic.exe" node service uninstall'
  Delete "$INSTDIR\cyphonic.exe"
  Delete "$INSTDIR\cyphonic-starter.exe"
  Delete "$INSTDIR\wintun.dll"
  Delete "$INSTDIR\root.pem"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  SetShellVarContext all
  Delete "$SMPROGRAMS\cyphonic starter.lnk"
  DeleteRegKey HKLM "${UNINSTALL_KEY}"
  ${GetParameters} $0
  ${GetOptions} $0 "/PURGE" $1
  IfErrors +2
    RMDir /r "$COMMONPROGRAMDATA\cyphonic"
SectionEnd
